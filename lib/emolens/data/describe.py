"""Descriptive numbers about the corpus for notebook 01: examples, lengths, topic coverage, balance tables."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from emolens.data.check import words
from emolens.data.records import Emotion, Story


def examples(stories: Sequence[Story], emotions: Sequence[Emotion], seed: int = 0) -> list[Story]:
    """One story per cluster, from a random emotion of that cluster (seeded)."""
    rng = random.Random(seed)
    by_emotion: dict[str, list[Story]] = {}
    for s in stories:
        by_emotion.setdefault(s.emotion, []).append(s)
    out = []
    for cluster in dict.fromkeys(e.cluster for e in sorted(emotions, key=lambda e: e.cluster_index)):
        members = [e.emotion for e in emotions if e.cluster == cluster and e.emotion in by_emotion]
        if members:
            out.append(rng.choice(by_emotion[rng.choice(members)]))
    return out


def lengths(stories: Sequence[Story], encode: Callable[[str], Sequence[int]], start: int = 50) -> dict[str, Any]:
    """Words and tokens per story, and the average share of a story's tokens that the pooling window keeps."""
    import numpy as np

    n_words = np.array([len(words(s.text)) for s in stories])
    n_tokens = np.array([len(encode(s.text)) for s in stories])
    pooled = float(np.mean(np.clip(n_tokens - (start + 1), 0, None) / n_tokens))
    return {"words": n_words, "tokens": n_tokens, "pooled_share": pooled,
            "words_min_median_max": np.percentile(n_words, [0, 50, 100]),
            "tokens_min_median_max": np.percentile(n_tokens, [0, 50, 100])}


def quantiles(x: Any, qs: Sequence[float] = (0.5, 0.9, 0.99, 1.0)) -> Any:
    """Quantiles of ``x`` (for the JSON beside a histogram)."""
    import numpy as np

    return np.quantile(np.asarray(x, float), list(qs))


def coverage(stories: Sequence[Story], emotions: Sequence[Emotion], n_topics: int) -> tuple[Any, list[str]]:
    """A 0/1 grid [emotion (grouped by cluster), topic] of which topics each emotion's stories use."""
    import numpy as np

    order = [e.emotion for e in sorted(emotions, key=lambda e: (e.cluster_index, e.emotion))]
    row = {e: i for i, e in enumerate(order)}
    grid = np.zeros((len(order), n_topics))
    for s in stories:
        if s.emotion in row:
            grid[row[s.emotion], s.topic_id] = 1
    return grid, order


def balance(stories: Sequence[Story], rows: str, cols: str) -> dict[str, dict[str, int]]:
    """Counts of stories by two of their fields (e.g. ``author`` x ``channel``), for the datasheet's tables."""
    table: dict[str, Counter] = {}
    for s in stories:
        table.setdefault(str(getattr(s, rows)), Counter())[str(getattr(s, cols))] += 1
    return {r: dict(sorted(c.items())) for r, c in sorted(table.items())}


def _markdown(table: dict[str, dict[str, int]], corner: str) -> str:
    cols = sorted({c for row in table.values() for c in row})
    lines = [f"| {corner} | " + " | ".join(cols) + " | total |", "|---" * (len(cols) + 2) + "|"]
    for r, row in table.items():
        lines.append(f"| {r} | " + " | ".join(str(row.get(c, 0)) for c in cols) + f" | {sum(row.values())} |")
    return "\n".join(lines)


def balance_tables(data_dir: Any = None) -> str:
    """Markdown tables of corpus v2's balance: writer x channel, writer x cluster, channel x person, and the
    per-emotion summary (writers per emotion, largest writer share with v1, channel spread, topics)."""
    from emolens.data.plan import balance_summary
    from emolens.data.records import load_emotions, load_stories

    emos = load_emotions(data_dir)
    cluster = {e.emotion: f"{e.cluster_index}. {e.cluster}" for e in emos}
    v2 = load_stories(data_dir, corpus="v2-new")

    class _Row:
        def __init__(self, s: Story) -> None:
            self.author, self.channel, self.person, self.cluster = s.author, s.channel, s.person, cluster[s.emotion]

    rows = [_Row(s) for s in v2]
    parts = [f"{len(v2)} v2 stories.", "",
             _markdown(balance(rows, "author", "channel"), "writer \\ channel"), "",
             _markdown(balance(rows, "author", "cluster"), "writer \\ cluster"), "",
             _markdown(balance(rows, "channel", "person"), "channel \\ person"), ""]
    if v2:
        summary = balance_summary(v2, emos)
        parts.append("Per emotion: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()) + ".")
    return "\n".join(parts)
