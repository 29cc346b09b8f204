"""Intake of neutral dialogues v2: ten more per topic (toward the paper's scale), checked as they arrive.

The plan: dialogue ``neutral-v2-TTT-J`` (topic TTT, J = 0..9) is written by ``writer-neutral-2`` for topics
0-49 and by ``writer-neutral-3`` for topics 50-99; J = 0 and 5 start with a neutral system prompt, and the
number of exchanges cycles 1, 2, 3, 1, 2, 4, 1, 3, 2, 5 over J, so lengths vary as in v1.
"""

from __future__ import annotations

from pathlib import Path

from emolens.data.check import NEUTRAL_FORBIDDEN, jaccard, shingles, words
from emolens.data.records import DataError, append_jsonl, load_topics, read_jsonl
from emolens.data.sets import load_neutral_dialogues, parse_dialogue
from emolens.paths import data_dir as repo_data_dir

NEUTRAL_WRITERS = {"writer-neutral-2": range(0, 50), "writer-neutral-3": range(50, 100)}
PER_TOPIC = 10
EXCHANGES = (1, 2, 3, 1, 2, 4, 1, 3, 2, 5)
WITH_SYSTEM = (0, 5)


def planned(writer: str) -> list[dict]:
    if writer not in NEUTRAL_WRITERS:
        raise DataError(f"unknown neutral writer {writer!r}; allowed: {', '.join(NEUTRAL_WRITERS)}")
    return [{"id": f"neutral-v2-{t:03d}-{j}", "topic_id": t, "exchanges": EXCHANGES[j], "system": j in WITH_SYSTEM}
            for t in NEUTRAL_WRITERS[writer] for j in range(PER_TOPIC)]


def todo(writer: str, n: int = 10, data_dir: Path | None = None) -> list[dict]:
    root = Path(data_dir or repo_data_dir())
    done = {d.id for d in load_neutral_dialogues(root, "v2")}
    topics = {t.topic_id: t.topic for t in load_topics(root)}
    return [dict(p, topic=topics[p["topic_id"]]) for p in planned(writer) if p["id"] not in done][:n]


def add(writer: str, submitted: Path, data_dir: Path | None = None) -> tuple[int, list[str]]:
    """Check ``{"id", "system", "turns"}`` lines against the plan and the neutrality rules; store the good ones."""
    root = Path(data_dir or repo_data_dir())
    plan = {p["id"]: p for p in planned(writer)}
    existing = load_neutral_dialogues(root, "v2")
    done = {d.id for d in existing}
    seen = [shingles(" ".join(t for _, t in d.turns)) for d in existing]
    stored, rejected = [], []
    for n, o in read_jsonl(submitted):
        did = o.get("id")
        where = f"line {n} ({did})"
        p = plan.get(did)
        if p is None:
            rejected.append(f"{where}: not one of {writer}'s planned ids (ask `neutral-todo`)")
            continue
        if did in done:
            rejected.append(f"{where}: already written")
            continue
        rec = {"id": did, "topic_id": p["topic_id"], "kind": "topic", "system": o.get("system"),
               "turns": o.get("turns"), "author": writer}
        try:
            d = parse_dialogue(rec, where)
        except DataError as e:
            rejected.append(str(e))
            continue
        problems = []
        if (d.system is not None) != p["system"]:
            problems.append("needs a neutral system prompt" if p["system"] else "must have system null")
        if len(d.turns) != 2 * p["exchanges"]:
            problems.append(f"{len(d.turns) // 2} exchanges, plan says {p['exchanges']}")
        for _, text in d.turns + ((("system", d.system),) if d.system else ()):
            m = NEUTRAL_FORBIDDEN.search(text)
            if m:
                problems.append(f"contains {m.group(0)!r} (neutral dialogues carry no feeling or pleasantry)")
        if sum(len(words(t)) for _, t in d.turns) < 25:
            problems.append("too short: at least 25 words in all")
        sh = shingles(" ".join(t for _, t in d.turns))
        if any(jaccard(sh, x) >= 0.3 for x in seen):
            problems.append("too close to another neutral dialogue")
        if problems:
            rejected.append(f"{where}: " + "; ".join(problems))
            continue
        stored.append(rec)
        done.add(did)
        seen.append(sh)
    append_jsonl(root / "neutral_v2" / f"{writer}.jsonl", stored)
    return len(stored), rejected
