"""The blind-read check: a reader who did not write the stories names each one's emotion.

The reader sees only the text and ranks up to five of the 171 words. Agreement is reported as top-1 and
top-5 accuracy over the 171 words and top-1 accuracy at the level of the paper's 10 clusters, each with a
bootstrap CI and its chance level.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emolens.data.records import DataError, Story, field, load_emotions, read_jsonl
from emolens.paths import data_dir as repo_data_dir

BLIND_FILE = "blind_read.jsonl"


def blind_sample(stories: Sequence[Story], n: int = 180, seed: int = 2026) -> list[Story]:
    """A seeded random sample of stories, in shuffled order (no emotion grouping for the reader to exploit)."""
    rng = random.Random(seed)
    return rng.sample(list(stories), n)


def load_blind_labels(data_dir: Path | None = None, name: str = BLIND_FILE) -> dict[str, list[str]]:
    """A blind reader's guesses by story id (``blind_read.jsonl`` for v1, ``blind_read_v2.jsonl`` for v2)."""
    path = Path(data_dir or repo_data_dir()) / name
    known = {e.emotion for e in load_emotions(data_dir)}
    out = {}
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        sid, guesses = field(o, "id", str, w), field(o, "guesses", list, w)
        bad = [g for g in guesses if g not in known]
        if not guesses or bad or len(guesses) > 5:
            raise DataError(f"{w}: 'guesses' must be 1-5 of the 171 emotion words; not allowed: {bad}")
        out[sid] = guesses
    return out


def blind_agreement(labels: dict[str, list[str]], stories: Sequence[Story], n_boot: int = 2000,
                    data_dir: Path | None = None) -> dict[str, Any]:
    """Top-1, top-5 and cluster-level agreement of the reader's guesses with the intended emotions."""
    import numpy as np

    from emolens.stats import bootstrap

    emos = load_emotions(data_dir)
    cluster = {e.emotion: e.cluster for e in emos}
    by_id = {s.id: s for s in stories}
    missing = [i for i in labels if i not in by_id]
    if missing:
        raise DataError(f"blind labels for unknown story ids: {missing[:5]}")
    ids = sorted(labels)
    top1 = np.array([labels[i][0] == by_id[i].emotion for i in ids], float)
    top5 = np.array([by_id[i].emotion in labels[i][:5] for i in ids], float)
    clus = np.array([cluster[labels[i][0]] == cluster[by_id[i].emotion] for i in ids], float)
    sizes = np.array([sum(1 for e in emos if e.cluster == c) for c in {e.cluster for e in emos}], float)
    out: dict[str, Any] = {"n": len(ids)}
    for name, x in (("top1", top1), ("top5", top5), ("cluster_top1", clus)):
        out[name] = bootstrap(np.mean, x, n_boot=n_boot).as_dict()
    out["chance"] = {"top1": 1 / len(emos), "top5": 5 / len(emos),
                     "cluster_top1": float(((sizes / sizes.sum()) ** 2).sum())}  # matching the cluster base rates
    return out


def confusions(labels: dict[str, list[str]], stories: Sequence[Story], k: int = 8) -> list[tuple[tuple[str, str], int]]:
    """The ``k`` most common (intended, first guess) pairs where the reader's first guess was wrong."""
    from collections import Counter

    by_id = {s.id: s for s in stories}
    return Counter((by_id[i].emotion, g[0]) for i, g in labels.items() if g[0] != by_id[i].emotion).most_common(k)


def write_blind_packet(stories: Sequence[Story], texts_path: Path, key_path: Path, n: int = 180,
                       seed: int = 2027, prefix: str = "v") -> None:
    """A blind-read packet: ``texts_path`` holds only opaque ids and texts, in shuffled order, for the reader;
    ``key_path`` maps the opaque ids back to story ids and must stay out of the reader's sight."""
    import json

    sample = blind_sample(stories, n, seed)
    Path(texts_path).write_text("".join(json.dumps({"blind_id": f"{prefix}{i:03d}", "text": s.text}) + "\n"
                                        for i, s in enumerate(sample)))
    Path(key_path).write_text(json.dumps({f"{prefix}{i:03d}": s.id for i, s in enumerate(sample)}))


def import_blind_answers(answers_path: Path, key_path: Path, out_path: Path, reader: str) -> int:
    """Map a reader's ``{"blind_id", "guesses"}`` answers back to story ids and write them in the labels schema."""
    import json

    key = json.loads(Path(key_path).read_text())
    rows = []
    for n, o in read_jsonl(Path(answers_path)):
        bid = field(o, "blind_id", str, f"{answers_path}:{n}")
        if bid not in key:
            raise DataError(f"{answers_path}:{n}: unknown blind id {bid!r}")
        rows.append({"id": key[bid], "blind_id": bid, "guesses": field(o, "guesses", list, f"{answers_path}:{n}"),
                     "reader": reader})
    Path(out_path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)
