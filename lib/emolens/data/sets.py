"""Typed loaders for the neutral dialogues and the evaluation sets in ``data/eval/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolens.data.records import DataError, field, read_jsonl
from emolens.paths import data_dir as repo_data_dir

ACTIVITY_CATEGORIES = ("helpful", "engaging", "social", "self_curiosity", "neutral", "aversive", "misaligned",
                       "unsafe")
PROBE_EMOTIONS = ("afraid", "calm", "happy", "sad")


@dataclass(frozen=True)
class NeutralDialogue:
    id: str
    topic_id: int | None
    kind: str
    system: str | None
    turns: tuple[tuple[str, str], ...]  # (role, text), starting with the user

    def messages(self) -> list[dict[str, str]]:
        sys = [{"role": "system", "content": self.system}] if self.system else []
        return sys + [{"role": r, "content": t} for r, t in self.turns]


@dataclass(frozen=True)
class ImplicitScenario:
    id: str
    emotion: str
    title: str
    text: str


@dataclass(frozen=True)
class NumericTemplate:
    id: str
    template: str
    values: tuple[float, ...]
    unit: str
    expected: dict[str, int]
    description: str

    def prompts(self) -> list[str]:
        return [self.template.format(x=v) for v in self.values]


@dataclass(frozen=True)
class Activity:
    id: str
    category: str
    text: str


@dataclass(frozen=True)
class UserAssistantPrompt:
    id: str
    text: str
    user_emotion: str
    assistant_emotion: str
    note: str


@dataclass(frozen=True)
class MinimalPair:
    id: str
    clean: str
    corrupt: str
    clean_span: str
    corrupt_span: str
    char_start: int
    emotion_clean: str
    emotion_corrupt: str
    kind: str


@dataclass(frozen=True)
class NegationPair:
    id: str
    emotion: str
    affirmed: str
    negated: str
    context: str


def _root(data_dir: Path | None) -> Path:
    return Path(data_dir or repo_data_dir())


NEUTRAL_VERSIONS = ("v1", "v2")


def load_neutral_dialogues(data_dir: Path | None = None, version: str = "v1") -> list[NeutralDialogue]:
    """The neutral dialogues: "v1", the 360 in ``neutral_dialogues.jsonl``; "v2", those plus the per-writer files
    in ``neutral_v2/`` (ten more dialogues per topic, toward the paper's scale)."""
    if version not in NEUTRAL_VERSIONS:
        raise DataError(f"unknown neutral-dialogue version {version!r}; allowed: {', '.join(NEUTRAL_VERSIONS)}")
    root = _root(data_dir)
    paths = [root / "neutral_dialogues.jsonl"]
    if version == "v2" and (root / "neutral_v2").is_dir():
        paths += sorted((root / "neutral_v2").glob("*.jsonl"))
    out = [d for p in paths for d in _read_dialogues(p)]
    ids = [d.id for d in out]
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate neutral dialogue ids in {root}: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    return out


def parse_dialogue(o: dict[str, Any], w: str) -> NeutralDialogue:
    """One neutral dialogue record; turns alternate user/assistant from the user and end with the assistant."""
    turns = field(o, "turns", list, w)
    pairs = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict):
            raise DataError(f"{w}: turn {k} must be an object with 'role' and 'text'")
        role, text = field(t, "role", str, f"{w} turn {k}"), field(t, "text", str, f"{w} turn {k}")
        want = "user" if k % 2 == 0 else "assistant"
        if role != want:
            raise DataError(f"{w}: turn {k} has role {role!r}; turns alternate user/assistant from the user")
        pairs.append((role, text))
    if not pairs or pairs[-1][0] != "assistant":
        raise DataError(f"{w}: a dialogue must end with an assistant turn")
    return NeutralDialogue(field(o, "id", str, w), field(o, "topic_id", (int, type(None)), w),
                           field(o, "kind", str, w), field(o, "system", (str, type(None)), w), tuple(pairs))


def _read_dialogues(path: Path) -> list[NeutralDialogue]:
    return [parse_dialogue(o, f"{path}:{n}") for n, o in read_jsonl(path)]


def load_implicit_scenarios(data_dir: Path | None = None) -> list[ImplicitScenario]:
    path = _root(data_dir) / "eval" / "implicit_scenarios.jsonl"
    return [ImplicitScenario(*(field(o, k, str, f"{path}:{n}") for k in ("id", "emotion", "title", "text")))
            for n, o in read_jsonl(path)]


def load_numeric_templates(data_dir: Path | None = None) -> list[NumericTemplate]:
    path = _root(data_dir) / "eval" / "numeric_intensity.jsonl"
    out = []
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        tpl = field(o, "template", str, w)
        if tpl.count("{x}") != 1:
            raise DataError(f"{w}: field 'template' must contain exactly one '{{x}}' slot")
        exp = field(o, "expected", dict, w)
        if set(exp) != set(PROBE_EMOTIONS) or any(v not in (-1, 0, 1) for v in exp.values()):
            raise DataError(f"{w}: field 'expected' must give -1, 0 or 1 for each of {PROBE_EMOTIONS}")
        out.append(NumericTemplate(field(o, "id", str, w), tpl, tuple(field(o, "values", list, w)),
                                   field(o, "unit", str, w), exp, field(o, "description", str, w)))
    return out


def load_activities(data_dir: Path | None = None) -> list[Activity]:
    path = _root(data_dir) / "eval" / "activities.jsonl"
    out = []
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        a = Activity(field(o, "id", str, w), field(o, "category", str, w), field(o, "text", str, w))
        if a.category not in ACTIVITY_CATEGORIES:
            raise DataError(f"{w}: category {a.category!r} not allowed: {ACTIVITY_CATEGORIES}")
        out.append(a)
    return out


def load_paper_activity_elo(data_dir: Path | None = None) -> list[tuple[str, int, int]]:
    """The paper's 64 activity ratings (Tables 9 and 17): ``(category, post-trained Elo, base Elo)`` per row.
    Numbers and categories only: the paper's activity wordings are not ours to copy, so comparisons with our
    activities are made per category."""
    path = _root(data_dir) / "eval" / "paper_activity_elo.jsonl"
    out = []
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        row = (field(o, "category", str, w), field(o, "elo_post_trained", int, w), field(o, "elo_base", int, w))
        if row[0] not in ACTIVITY_CATEGORIES:
            raise DataError(f"{w}: category {row[0]!r} not allowed: {ACTIVITY_CATEGORIES}")
        out.append(row)
    return out


def _string_records(path: Path, cls: Any, keys: tuple[str, ...]) -> list[Any]:
    """Records whose fields are all strings, in ``keys`` order."""
    return [cls(*(field(o, k, str, f"{path}:{n}") for k in keys)) for n, o in read_jsonl(path)]


def load_user_assistant(data_dir: Path | None = None) -> list[UserAssistantPrompt]:
    return _string_records(_root(data_dir) / "eval" / "user_assistant.jsonl", UserAssistantPrompt,
                           ("id", "text", "user_emotion", "assistant_emotion", "note"))


def load_minimal_pairs(data_dir: Path | None = None) -> list[MinimalPair]:
    path = _root(data_dir) / "eval" / "minimal_pairs.jsonl"
    out = []
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        p = MinimalPair(*(field(o, k, str, w) for k in ("id", "clean", "corrupt", "clean_span", "corrupt_span")),
                        field(o, "char_start", int, w), field(o, "emotion_clean", str, w),
                        field(o, "emotion_corrupt", str, w), field(o, "kind", str, w))
        s = p.char_start
        if not (p.clean[:s] == p.corrupt[:s] and p.clean[s:].startswith(p.clean_span)
                and p.corrupt[s:].startswith(p.corrupt_span)
                and p.clean[s + len(p.clean_span):] == p.corrupt[s + len(p.corrupt_span):]):
            raise DataError(f"{w}: clean and corrupt must differ only in the spans at char_start {s}")
        out.append(p)
    return out


def load_negation_pairs(data_dir: Path | None = None) -> list[NegationPair]:
    return _string_records(_root(data_dir) / "eval" / "negation_pairs.jsonl", NegationPair,
                           ("id", "emotion", "affirmed", "negated", "context"))


def load_all_sets(data_dir: Path | None = None) -> dict[str, Any]:
    """Every evaluation set and the neutral dialogues, loaded and validated."""
    return {"neutral_dialogues": load_neutral_dialogues(data_dir),
            "implicit_scenarios": load_implicit_scenarios(data_dir),
            "numeric_intensity": load_numeric_templates(data_dir), "activities": load_activities(data_dir),
            "user_assistant": load_user_assistant(data_dir), "minimal_pairs": load_minimal_pairs(data_dir),
            "negation_pairs": load_negation_pairs(data_dir)}
