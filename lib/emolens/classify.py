"""Nearest-vector classification of texts by emotion, with the scores that the controls reuse."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def cosine_scores(x: Any, vectors: Any) -> np.ndarray:
    """Cosine similarity ``[n, E]`` of rows of ``x [n, d]`` with ``vectors [E, d]``."""
    x, v = np.asarray(x, float), np.asarray(vectors, float)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    return x @ v.T


def topk_accuracy(scores: Any, labels: Sequence[int], k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores."""
    s = np.asarray(scores)
    top = np.argsort(-s, axis=1)[:, :k]
    return float(np.mean([lab in row for lab, row in zip(labels, top)]))


def rank_of_true(scores: Any, labels: Sequence[int]) -> np.ndarray:
    """1-based rank of the true label in each row (1 = top)."""
    s = np.asarray(scores)
    return np.array([1 + int(np.sum(row > row[lab])) for row, lab in zip(s, labels)])


def loo_centroid_scores(x: Any, labels: Sequence[int], n_classes: int) -> np.ndarray:
    """Leave-one-out scores: each row against class means (minus their grand mean) computed without it."""
    x = np.asarray(x, float)
    labels = np.asarray(labels)
    sums = np.stack([x[labels == c].sum(0) for c in range(n_classes)])
    counts = np.array([(labels == c).sum() for c in range(n_classes)], float)
    out = np.zeros((len(x), n_classes))
    for i in range(len(x)):
        s, n = sums.copy(), counts.copy()
        s[labels[i]] -= x[i]
        n[labels[i]] -= 1
        means = s / np.clip(n, 1, None)[:, None]
        out[i] = cosine_scores(x[i:i + 1] - means.mean(0), means - means.mean(0))[0]
    return out


def shuffled_label_accuracies(x: Any, labels: Sequence[int], n_classes: int, n_shuffles: int = 200,
                              seed: int = 0) -> np.ndarray:
    """Leave-one-out top-1 accuracy after shuffling labels: the null for :func:`loo_centroid_scores`."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    out = []
    for _ in range(n_shuffles):
        perm = rng.permutation(labels)
        out.append(topk_accuracy(loo_centroid_scores(x, perm, n_classes), perm, 1))
    return np.array(out)
