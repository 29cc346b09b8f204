"""Held-out checks of emotion vectors: split by topic, classify unseen stories by their nearest vector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from emolens.classify import cosine_scores, topk_accuracy
from emolens.vectors import build_emotion_vectors

N_FOLDS = 5


def topic_folds(topic_ids: Sequence[int], n_folds: int = N_FOLDS) -> np.ndarray:
    """Fold of each story: ``topic_id % n_folds``, so no test topic is ever seen in extraction."""
    return np.asarray(topic_ids) % n_folds


@dataclass
class HeldOut:
    """Scores of every story against vectors extracted without its fold: ``scores[story, layer, emotion]``."""

    scores: np.ndarray
    labels: np.ndarray  # emotion index per story
    layers: list[int]
    emotions: list[str]

    def accuracy(self, k: int = 1) -> np.ndarray:
        return np.array([topk_accuracy(self.scores[:, j], self.labels, k) for j in range(len(self.layers))])


def heldout_scores(story_means: Any, counts: Any, labels: Sequence[str], topic_ids: Sequence[int],
                   emotions: Sequence[str], layers: Sequence[int], neutral_cov: Any | None,
                   variance_fraction: float | None = 0.5, denoised: bool = True,
                   n_folds: int = N_FOLDS) -> HeldOut:
    """Cross-validate over topic folds: vectors from the other folds' stories, cosine scores for this fold's."""
    folds = topic_folds(topic_ids, n_folds)
    keep = np.asarray(counts) > 0
    lab = np.array([list(emotions).index(e) for e in labels])
    scores = np.zeros((len(labels), len(layers), len(emotions)))
    for f in range(n_folds):
        train = np.where((folds != f) & keep)[0]
        test = np.where(folds == f)[0]
        ev = build_emotion_vectors(story_means[train], counts[train], [labels[i] for i in train], emotions, layers,
                                   neutral_cov if denoised else None, variance_fraction)
        vecs = ev.vectors if denoised else ev.centred_raw()
        centre = ev.raw.mean(0)  # the training grand mean: test activations are read relative to it
        for j in range(len(layers)):
            x = (story_means[test, j] - centre[j]).numpy()
            if denoised and ev.neutral_pcs[j].shape[0]:
                pc = ev.neutral_pcs[j].numpy()
                x = x - (x @ pc.T) @ pc
            scores[test, j] = cosine_scores(x, vecs[:, j].numpy())
    return HeldOut(scores[keep], lab[keep], list(layers), list(emotions))
