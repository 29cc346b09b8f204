"""Record types and JSONL loaders. A bad file fails with its path, line and the field at fault."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolens.paths import data_dir as repo_data_dir

STORIES_PER_EMOTION = 12
N_TOPICS = 100
CHANNELS = ("action", "body", "speech", "thought", "setting")  # the paper's five narrative channels
TOPIC_STRIDE = 8  # story j of emotion i uses topic (i + 8 j) % 100: every emotion spans the topic list




class DataError(ValueError):
    """A data file is malformed: the message names the file, the line and the field."""


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-empty line; malformed JSON raises DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records to a JSONL file (created with its folder if missing): the writers' intakes store here."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Return obj[name], checking presence and type; errors name the place and the expected type."""
    if name not in obj:
        raise DataError(f"{where}: missing field '{name}'")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field '{name}' must be {want}, got {value!r}")
    return value


@dataclass(frozen=True)
class Emotion:
    index: int
    emotion: str
    cluster: str
    cluster_index: int
    exemplar: bool


@dataclass(frozen=True)
class Topic:
    topic_id: int
    category: str
    topic: str


@dataclass(frozen=True)
class Story:
    id: str
    emotion: str
    topic_id: int
    person: str
    text: str
    author: str
    channel: str | None = None  # the planned narrative channel (v2 stories); None for v1

    @property
    def slot(self) -> int:
        """The story's index j within its emotion (0..11 in v1, 12..51 in v2), read from its id."""
        return int(self.id.rsplit("-", 1)[1])


def load_emotions(data_dir: Path | None = None) -> list[Emotion]:
    path = Path(data_dir or repo_data_dir()) / "emotions.jsonl"
    out = []
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        out.append(Emotion(field(o, "index", int, w), field(o, "emotion", str, w), field(o, "cluster", str, w),
                           field(o, "cluster_index", int, w), field(o, "exemplar", bool, w)))
    if [e.index for e in out] != list(range(len(out))):
        raise DataError(f"{path}: 'index' must run 0, 1, 2, ... in file order")
    return out


def load_topics(data_dir: Path | None = None) -> list[Topic]:
    path = Path(data_dir or repo_data_dir()) / "topics.jsonl"
    out = []
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        out.append(Topic(field(o, "topic_id", int, w), field(o, "category", str, w), field(o, "topic", str, w)))
    if [t.topic_id for t in out] != list(range(len(out))):
        raise DataError(f"{path}: 'topic_id' must run 0, 1, 2, ... in file order")
    return out


def slug(emotion: str) -> str:
    """File-name form of an emotion word: 'at ease' -> 'at_ease'."""
    return emotion.replace(" ", "_")


def planned_slot(emotion_index: int, j: int) -> tuple[int, str]:
    """The (topic_id, person) the corpus plan assigns to story j of emotion number emotion_index."""
    return (emotion_index + TOPIC_STRIDE * j) % N_TOPICS, ("first" if j % 2 == 0 else "third")


def parse_story(o: dict[str, Any], where: str) -> Story:
    s = Story(field(o, "id", str, where), field(o, "emotion", str, where), field(o, "topic_id", int, where),
              field(o, "person", str, where), field(o, "text", str, where), field(o, "author", str, where),
              field(o, "channel", str, where) if "channel" in o else None)
    if s.channel is not None and s.channel not in CHANNELS:
        raise DataError(f"{where}: field 'channel' must be one of {CHANNELS}, got {s.channel!r}")
    if s.person not in ("first", "third"):
        raise DataError(f"{where}: field 'person' must be 'first' or 'third', got {s.person!r}")
    if not s.id.startswith(slug(s.emotion) + "-") or not s.id.rsplit("-", 1)[1].isdigit():
        raise DataError(f"{where}: field 'id' must look like '{slug(s.emotion)}-NN', got {s.id!r}")
    return s


CORPORA = ("v1", "v2", "v2-new")


def load_stories(data_dir: Path | None = None, emotions: list[str] | None = None, corpus: str = "v1") -> list[Story]:
    """The stories of ``corpus`` (or only those of ``emotions``), in emotion-list order, then slot order.

    ``"v1"``: the 12 block-written stories per emotion in ``data/stories/``; ``"v2-new"``: the stories written to
    the crossed v2 plan (``emolens.data.plan``), from ``data/stories/`` and the per-writer files in
    ``data/stories_v2/``; ``"v2"``: both.
    """
    if corpus not in CORPORA:
        raise DataError(f"unknown corpus {corpus!r}; allowed: {', '.join(CORPORA)}")
    root = Path(data_dir or repo_data_dir())
    known = [e.emotion for e in load_emotions(root)]
    wanted = known if emotions is None else emotions
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise DataError(f"unknown emotion(s) {unknown}; allowed: the {len(known)} words in {root / 'emotions.jsonl'}")
    keep = set(wanted)
    found: dict[str, Story] = {}

    def add(s: Story, where: str) -> None:
        if s.id in found:
            raise DataError(f"{where}: story id {s.id!r} appears twice")
        if s.emotion in keep:
            found[s.id] = s

    for emo in wanted:
        path = root / "stories" / f"{slug(emo)}.jsonl"
        if not path.exists():
            continue
        for n, o in read_jsonl(path):
            s = parse_story(o, f"{path}:{n}")
            if s.emotion != emo:
                raise DataError(f"{path}:{n}: field 'emotion' is {s.emotion!r} in the file for {emo!r}")
            add(s, f"{path}:{n}")
    staging = root / "stories_v2"
    for path in sorted(staging.glob("*.jsonl")) if staging.is_dir() else []:
        for n, o in read_jsonl(path):
            s = parse_story(o, f"{path}:{n}")
            if s.emotion not in known:
                raise DataError(f"{path}:{n}: unknown emotion {s.emotion!r}")
            add(s, f"{path}:{n}")
    order = {e: i for i, e in enumerate(wanted)}
    out = sorted(found.values(), key=lambda s: (order[s.emotion], s.slot))
    if corpus == "v1":
        return [s for s in out if s.slot < STORIES_PER_EMOTION]
    if corpus == "v2-new":
        return [s for s in out if s.slot >= STORIES_PER_EMOTION]
    return out
