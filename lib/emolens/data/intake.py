"""Intake of corpus v2 stories: a writer asks for its next slots, submits texts, and every text is checked
against the plan, the banned words, the length and the writer's own earlier stories before it is stored.

Stories land in ``data/stories_v2/<writer>.jsonl`` (one file per writer, append-only), with the planned
topic, person and channel filled in from the plan, so a writer cannot mislabel a story.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from emolens.data.check import MAX_WORDS, MIN_WORDS, jaccard, shingles, words
from emolens.data.leaks import load_banned_words
from emolens.data.plan import V2_WRITERS, Slot, v2_plan, writer_order
from emolens.data.records import DataError, append_jsonl, load_emotions, load_stories, load_topics, read_jsonl
from emolens.paths import data_dir as repo_data_dir

# Stock phrases STYLE.md asks writers to avoid; a story containing one is sent back.
STOCK_PHRASES = ("knot in my stomach", "knot in her stomach", "knot in his stomach", "heart pounding",
                 "heart was pounding", "breath i didn't know", "breath she didn't know", "breath he didn't know",
                 "tears welled", "smile tugged", "let out a breath", "a shiver ran down", "heart skipped a beat")
ROLE_TAGS = re.compile(r"^\s*(human|assistant|user|system)\s*:", re.IGNORECASE | re.MULTILINE)
CURLY = {"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"}
NEAR_DUPLICATE_OWN = 0.3  # stricter than the corpus-wide 0.5: a writer must not reuse its own paragraphs


def normalise_quotes(text: str) -> str:
    """Straight quotes everywhere (speech in double quotes is the corpus rule)."""
    for a, b in CURLY.items():
        text = text.replace(a, b)
    return " ".join(text.split())


def staging_path(writer: str, data_dir: Path | None = None) -> Path:
    return Path(data_dir or repo_data_dir()) / "stories_v2" / f"{writer}.jsonl"


def _plan(root: Path) -> list[Slot]:
    return v2_plan([e.emotion for e in load_emotions(root)])


def todo(writer: str, n: int = 10, data_dir: Path | None = None) -> list[dict]:
    """The writer's next ``n`` unwritten slots, with the topic's text, in the writer's order."""
    root = Path(data_dir or repo_data_dir())
    done = {s.id for s in load_stories(root, corpus="v2-new")}
    topics = {t.topic_id: t.topic for t in load_topics(root)}
    banned = load_banned_words(root)
    out = []
    for s in writer_order(_plan(root), writer):
        if s.id not in done:
            out.append({"id": s.id, "emotion": s.emotion, "person": s.person, "channel": s.channel,
                        "topic": topics[s.topic_id], "never_use": list(banned.terms[s.emotion])})
            if len(out) == n:
                break
    return out


def add(writer: str, submitted: Path, data_dir: Path | None = None) -> tuple[int, list[str]]:
    """Check each ``{"id", "text"}`` line of ``submitted`` and append the good ones to the writer's file.

    Returns (number stored, list of rejections with reasons). Nothing is stored for a rejected line.
    """
    root = Path(data_dir or repo_data_dir())
    if writer not in V2_WRITERS:
        raise DataError(f"unknown v2 writer {writer!r}; allowed: {', '.join(V2_WRITERS)}")
    plan = {s.id: s for s in _plan(root)}
    banned = load_banned_words(root)
    existing = load_stories(root, corpus="v2")
    done = {s.id for s in existing}
    own = [shingles(s.text) for s in existing if s.author == writer]
    openings = Counter(" ".join(words(s.text)[:4]) for s in existing if s.author == writer)
    exact = {" ".join(words(s.text)) for s in existing}
    stored: list[dict] = []
    rejected: list[str] = []
    for n, o in read_jsonl(submitted):
        sid, text = o.get("id"), o.get("text")
        where = f"line {n} ({sid})"
        if not isinstance(sid, str) or not isinstance(text, str):
            rejected.append(f"{where}: needs string fields 'id' and 'text'")
            continue
        slot = plan.get(sid)
        if slot is None:
            rejected.append(f"{where}: not a v2 slot id (ask `todo` for yours)")
            continue
        if slot.writer != writer:
            rejected.append(f"{where}: slot belongs to {slot.writer}, not {writer}")
            continue
        if sid in done:
            rejected.append(f"{where}: already written")
            continue
        text = normalise_quotes(text)
        problems = []
        nw = len(words(text))
        if not MIN_WORDS <= nw <= MAX_WORDS:
            problems.append(f"{nw} words, allowed {MIN_WORDS}-{MAX_WORDS}")
        hits = banned.leaks(slot.emotion, text)
        if hits:
            problems.append(f"banned word(s) for {slot.emotion!r}: {sorted(set(hits))}")
        low = text.lower()
        stock = [p for p in STOCK_PHRASES if p in low]
        if stock:
            problems.append(f"stock phrase(s) {stock}")
        if ROLE_TAGS.search(text):
            problems.append("contains a dialogue tag like 'Human:'")
        if "\n" in text:
            problems.append("must be one paragraph")
        if slot.channel == "speech" and text.count('"') < 4:
            problems.append("the speech channel needs at least two quoted lines in double quotes")
        key = " ".join(words(text))
        if key in exact:
            problems.append("exact duplicate of a stored story")
        sh = shingles(text)
        close = max((jaccard(sh, x) for x in own), default=0.0)
        if close >= NEAR_DUPLICATE_OWN:
            problems.append(f"too close to one of your earlier stories (Jaccard {close:.2f})")
        opening = " ".join(words(text)[:4])
        if openings[opening] >= 1:
            problems.append(f"opening '{opening}' already used in one of your stories")
        if problems:
            rejected.append(f"{where}: " + "; ".join(problems))
            continue
        rec = {"id": sid, "emotion": slot.emotion, "topic_id": slot.topic_id, "person": slot.person,
               "channel": slot.channel, "text": text, "author": writer}
        stored.append(rec)
        done.add(sid)
        own.append(sh)
        openings[opening] += 1
        exact.add(key)
    append_jsonl(staging_path(writer, root), stored)
    return len(stored), rejected


def status(data_dir: Path | None = None) -> dict[str, tuple[int, int]]:
    """Per writer: (written, planned)."""
    root = Path(data_dir or repo_data_dir())
    plan = _plan(root)
    have = Counter(s.author for s in load_stories(root, corpus="v2-new"))
    want = Counter(s.writer for s in plan)
    return {w: (have.get(w, 0), want[w]) for w in V2_WRITERS}
