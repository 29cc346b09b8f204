"""Dialogue data for the speaker and deflection experiments (paper sections 2.3-2.4 and 6): plans, loaders and
the intake that checks each dialogue as it is written.

Two-speaker dialogues (``data/dialogues/speakers/<writer>.jsonl``): two speakers, each feeling a different
emotion from :data:`SPEAKER_EMOTIONS` (24, every cluster of the paper), never named. Half are written as a
Human/Assistant exchange (the emotion of the Human and of the Assistant swapped across dialogues, so role and
emotion are crossed), half between two people with neutral names, so the role effect can be separated.

Deflection dialogues (``data/dialogues/deflection/<writer>.jsonl``): a line of context states a character's
real feeling (:data:`DEFLECTION_TARGETS`, never by its word), and in the dialogue the character shows a
different one (``deflect``), or shows the real one openly (``open``, the matched control).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolens.data.check import jaccard, shingles, words
from emolens.data.leaks import load_banned_words
from emolens.data.records import DataError, append_jsonl, field, load_topics, read_jsonl
from emolens.paths import data_dir as repo_data_dir

SPEAKER_EMOTIONS = ("happy", "excited", "calm", "relaxed", "inspired", "loving", "grateful", "proud", "smug",
                    "amused", "playful", "bored", "tired", "suspicious", "angry", "frustrated", "hostile",
                    "afraid", "nervous", "surprised", "desperate", "guilty", "sad", "lonely")
DEFLECTION_TARGETS = ("angry", "afraid", "sad", "desperate", "guilty", "nervous", "jealous", "hurt", "frustrated",
                      "ashamed", "lonely", "worried")
SHOWN = ("calm", "cheerful", "content", "indifferent")
NEUTRAL_NAMES = ("Alex", "Sam", "Robin", "Jordan", "Kai", "Noor", "Ines", "Tomas", "Mei", "Femi", "Lena", "Ravi")
N_SPEAKER_DIALOGUES = 480
DEFLECT_PER_TARGET = 25  # and as many open controls
# Each kind's plan is split between its writers: the first writer takes the first half of the plan, and so on.
WRITERS = {"speakers": ("writer-speakers", "writer-speakers-2"),
           "deflection": ("writer-deflection", "writer-deflection-2")}
TURNS = (4, 5, 6, 7, 8)


@dataclass(frozen=True)
class Dialogue:
    id: str
    kind: str  # "speakers" or "deflection"
    speakers: tuple[str, str]  # display names, e.g. ("Human", "Assistant") or ("Alex", "Noor")
    emotions: tuple[str, str]  # the emotion each speaker feels (deflection: the character's real one, then "")
    turns: tuple[tuple[int, str], ...]  # (speaker index 0/1, text)
    topic_id: int
    variant: str  # speakers: "human_assistant" | "names"; deflection: "deflect" | "open"
    shown: str | None = None  # deflection: the emotion the character displays
    context: str | None = None  # deflection: the line that states the real feeling

    def text(self) -> str:
        """The dialogue as the model reads it in plain form: 'Name: line' per turn, after any context line."""
        body = "\n\n".join(f"{self.speakers[s]}: {t}" for s, t in self.turns)
        return f"{self.context}\n\n{body}" if self.context else body


def speaker_plan() -> list[dict[str, Any]]:
    """480 ordered pairs of different emotions: each emotion speaks first 20 times against 20 partners, half as
    Human/Assistant (the Human's side alternating) and half between two names."""
    E, out = len(SPEAKER_EMOTIONS), []
    for k in range(N_SPEAKER_DIALOGUES):
        i, r = k % E, k // E
        j = (i + 1 + r % (E - 1)) % E
        variant = "names" if r % 2 else "human_assistant"
        if variant == "names":
            speakers = (NEUTRAL_NAMES[k % 12], NEUTRAL_NAMES[(k + 5) % 12])
        else:
            speakers = ("Human", "Assistant") if (r // 2) % 2 == 0 else ("Assistant", "Human")
        out.append({"id": f"speakers-{k:03d}", "speakers": list(speakers),
                    "emotions": [SPEAKER_EMOTIONS[i], SPEAKER_EMOTIONS[j]], "variant": variant,
                    "turns": TURNS[k % 5], "topic_id": (7 * k + 3) % 100})
    return out


def deflection_plan() -> list[dict[str, Any]]:
    """Per target emotion, 25 dialogues where the character shows another feeling and 25 matched open ones
    (same topic and length, the feeling shown)."""
    out = []
    for t, target in enumerate(DEFLECTION_TARGETS):
        for n in range(DEFLECT_PER_TARGET):
            topic = (13 * t + 4 * n) % 100
            base = {"target": target, "turns": TURNS[n % 5], "topic_id": topic,
                    "speakers": [NEUTRAL_NAMES[(t + n) % 12], NEUTRAL_NAMES[(t + n + 7) % 12]]}
            out.append(dict(base, id=f"deflect-{target}-{n:02d}", variant="deflect", shown=SHOWN[(t + n) % 4]))
            out.append(dict(base, id=f"open-{target}-{n:02d}", variant="open", shown=target))
    return out


def _plan(kind: str) -> list[dict[str, Any]]:
    if kind == "speakers":
        return speaker_plan()
    if kind == "deflection":
        return deflection_plan()
    raise DataError(f"unknown dialogue kind {kind!r}; allowed: speakers, deflection")


def _folder(kind: str, data_dir: Path | None) -> Path:
    return Path(data_dir or repo_data_dir()) / "dialogues" / kind


def load_dialogues(kind: str, data_dir: Path | None = None) -> list[Dialogue]:
    """Every stored dialogue of ``kind`` ("speakers" or "deflection"), validated against its plan."""
    plan = {p["id"]: p for p in _plan(kind)}
    out = []
    folder = _folder(kind, data_dir)
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for n, o in read_jsonl(path):
            out.append(_parse(kind, o, plan, f"{path}:{n}"))
    ids = [d.id for d in out]
    if len(set(ids)) != len(ids):
        raise DataError(f"{folder}: duplicate dialogue ids")
    return out


def _parse(kind: str, o: dict[str, Any], plan: dict[str, dict[str, Any]], where: str) -> Dialogue:
    did = field(o, "id", str, where)
    p = plan.get(did)
    if p is None:
        raise DataError(f"{where}: {did!r} is not a planned {kind} dialogue id")
    turns = field(o, "turns", list, where)
    parsed = []
    for k, t in enumerate(turns):
        if not isinstance(t, dict):
            raise DataError(f"{where}: turn {k} must be an object with 'speaker' (0 or 1) and 'text'")
        s = field(t, "speaker", int, f"{where} turn {k}")
        if s not in (0, 1) or s != k % 2:
            raise DataError(f"{where}: turn {k} must be spoken by speaker {k % 2} (turns alternate from speaker 0)")
        parsed.append((s, field(t, "text", str, f"{where} turn {k}")))
    if len(parsed) != p["turns"]:
        raise DataError(f"{where}: {len(parsed)} turns, the plan says {p['turns']}")
    context = o.get("context") if kind == "deflection" else None
    if kind == "deflection" and (not isinstance(context, str) or not context.strip()):
        raise DataError(f"{where}: a deflection dialogue needs a 'context' line stating the character's real feeling")
    emotions = tuple(p["emotions"]) if kind == "speakers" else (p["target"], "")
    return Dialogue(did, kind, tuple(p["speakers"]), emotions, tuple(parsed), p["topic_id"], p["variant"],
                    p.get("shown"), context)


def writer_share(kind: str, writer: str) -> list[dict[str, Any]]:
    """The part of ``kind``'s plan that ``writer`` writes (contiguous, so matched deflect/open pairs stay together)."""
    names = WRITERS.get(kind)
    if names is None or writer not in names:
        raise DataError(f"unknown {kind} writer {writer!r}; allowed: {', '.join(names or ())}")
    plan = _plan(kind)
    k, per = names.index(writer), -(-len(plan) // len(names))
    return plan[k * per:(k + 1) * per]


def todo(kind: str, n: int = 10, data_dir: Path | None = None, writer: str | None = None) -> list[dict[str, Any]]:
    done = {d.id for d in load_dialogues(kind, data_dir)}
    topics = {t.topic_id: t.topic for t in load_topics(data_dir)}
    share = writer_share(kind, writer or WRITERS[kind][0])
    return [dict(p, topic=topics[p["topic_id"]]) for p in share if p["id"] not in done][:n]


def _never_named(kind: str, p: dict[str, Any]) -> list[str]:
    if kind == "speakers":
        return list(p["emotions"])
    return sorted({p["target"], p["shown"]})


def add(kind: str, submitted: Path, data_dir: Path | None = None, writer: str | None = None
        ) -> tuple[int, list[str]]:
    """Check submitted dialogues (plan, turns, the emotions never named, length, no near-duplicates); store the
    good ones in ``data/dialogues/<kind>/<writer>.jsonl``."""
    root = Path(data_dir or repo_data_dir())
    writer = writer or WRITERS[kind][0]
    mine = {p["id"] for p in writer_share(kind, writer)}
    plan = {p["id"]: p for p in _plan(kind)}
    banned = load_banned_words(root)
    existing = load_dialogues(kind, root)
    done = {d.id for d in existing}
    seen = [shingles(d.text()) for d in existing]
    stored, rejected = [], []
    for n, o in read_jsonl(submitted):
        did = o.get("id")
        where = f"line {n} ({did})"
        if did in done:
            rejected.append(f"{where}: already written")
            continue
        if did in plan and did not in mine:
            rejected.append(f"{where}: belongs to another {kind} writer's share")
            continue
        try:
            d = _parse(kind, o, plan, where)
        except DataError as e:
            rejected.append(str(e))
            continue
        problems = []
        body = d.text()
        for emo in _never_named(kind, plan[did]):
            hits = banned.leaks(emo, body)
            if hits:
                problems.append(f"names {emo!r}: {sorted(set(hits))}")
        for _, t in d.turns:
            if not 4 <= len(words(t)) <= 80:
                problems.append(f"a turn of {len(words(t))} words (allowed 4-80)")
                break
        sh = shingles(body)
        if any(jaccard(sh, x) >= 0.3 for x in seen):
            problems.append("too close to another dialogue")
        if problems:
            rejected.append(f"{where}: " + "; ".join(problems))
            continue
        rec = {"id": did, "turns": [{"speaker": s, "text": t} for s, t in d.turns], "author": writer}
        if d.context:
            rec["context"] = d.context
        stored.append(rec)
        done.add(did)
        seen.append(sh)
    append_jsonl(_folder(kind, root) / f"{writer}.jsonl", stored)
    return len(stored), rejected
