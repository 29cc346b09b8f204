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
                   n_folds: int = N_FOLDS, random_directions_seed: int | None = None) -> HeldOut:
    """Cross-validate over topic folds: vectors from the other folds' stories, cosine scores for this fold's.

    ``random_directions_seed`` replaces every emotion vector by a random direction of the same norm: the
    matched-norm null, which shares everything with the real run except the directions.
    """
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
        if random_directions_seed is not None:
            import torch

            g = torch.Generator().manual_seed(random_directions_seed + f)
            r = torch.randn(vecs.shape, generator=g)
            vecs = r / r.norm(dim=-1, keepdim=True) * vecs.norm(dim=-1, keepdim=True)
        centre = ev.raw.mean(0)  # the training grand mean: test activations are read relative to it
        for j in range(len(layers)):
            x = (story_means[test, j] - centre[j]).numpy()
            if denoised and ev.neutral_pcs[j].shape[0]:
                pc = ev.neutral_pcs[j].numpy()
                x = x - (x @ pc.T) @ pc
            scores[test, j] = cosine_scores(x, vecs[:, j].numpy())
    return HeldOut(scores[keep], lab[keep], list(layers), list(emotions))


def bag_of_words_scores(texts: Sequence[str], labels: Sequence[str], topic_ids: Sequence[int],
                        emotions: Sequence[str], n_folds: int = N_FOLDS) -> HeldOut:
    """The text baseline on the same topic folds: TF-IDF (words and bigrams) + multinomial logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    folds = topic_folds(topic_ids, n_folds)
    lab = np.array([list(emotions).index(e) for e in labels])
    scores = np.full((len(texts), 1, len(emotions)), -np.inf)
    for f in range(n_folds):
        train, test = np.where(folds != f)[0], np.where(folds == f)[0]
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        xtr = vec.fit_transform([texts[i] for i in train])
        clf = LogisticRegression(C=10.0, max_iter=2000).fit(xtr, lab[train])
        proba = clf.predict_proba(vec.transform([texts[i] for i in test]))
        scores[np.ix_(test, [0], clf.classes_)] = proba[:, None, :]
    return HeldOut(scores, lab, [-1], list(emotions))


def cluster_accuracy(scores: np.ndarray, labels: np.ndarray, cluster_of: Sequence[int]) -> np.ndarray:
    """Per story: does the top-scoring emotion fall in the true emotion's cluster? (0/1 array)"""
    c = np.asarray(cluster_of)
    return (c[np.argmax(scores, axis=1)] == c[labels]).astype(float)
