"""Held-out checks of emotion vectors: split by topic, classify unseen stories by their nearest vector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from emolens.stats import cosine
from emolens.vectors import build_emotion_vectors, project_out

N_FOLDS = 5



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
        out[i] = cosine(x[i:i + 1] - means.mean(0), means - means.mean(0))[0]
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
            x = story_means[test, j] - centre[j]
            if denoised:
                x = project_out(x, ev.neutral_pcs[j])  # the same projection the vectors went through
            scores[test, j] = cosine(x.numpy(), vecs[:, j].numpy())
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


def _summary(h: HeldOut, cluster_of: Sequence[int], n_boot: int) -> dict[str, Any]:
    from emolens.stats import bootstrap

    s = h.scores[:, 0]
    top1 = (s.argmax(1) == h.labels).astype(float)
    top5 = np.array([lab in row for lab, row in zip(h.labels, np.argsort(-s, 1)[:, :5])], float)
    return {"top1": bootstrap(np.mean, top1, n_boot=n_boot), "top5": bootstrap(np.mean, top5, n_boot=n_boot),
            "cluster": bootstrap(np.mean, cluster_accuracy(s, h.labels, cluster_of), n_boot=n_boot),
            "correct": top1}


def classification_with_controls(acts: Any, layer: int, cluster_of: Sequence[int], variance_fraction: float = 0.5,
                                 n_shuffles: int = 10, bag_of_words: bool = True, n_boot: int = 2000,
                                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """Held-out (topic-fold) classification at one layer with its controls, each with bootstrap CIs:
    denoised vectors, raw vectors, random directions of matched norm, shuffled labels, and (optionally) the
    bag-of-words text baseline. ``acts`` is a :class:`emolens.vectors.CorpusActivations`."""
    j = acts.layers.index(layer)
    one = dict(story_means=acts.means[:, [j]], counts=acts.counts, labels=acts.labels, topic_ids=acts.topic_ids,
               emotions=acts.emotions, layers=[layer], neutral_cov=acts.neutral_cov[[j]],
               variance_fraction=variance_fraction)
    runs = {"vectors": heldout_scores(**one),
            "vectors, raw": heldout_scores(**dict(one, neutral_cov=None), denoised=False),
            "random directions": heldout_scores(**one, random_directions_seed=seed)}
    if bag_of_words:
        runs["bag of words"] = bag_of_words_scores([s.text for s in acts.stories], acts.labels, acts.topic_ids,
                                                   acts.emotions)
    out = {k: _summary(h, cluster_of, n_boot) for k, h in runs.items()}
    from emolens.stats import bootstrap

    rng = np.random.default_rng(seed)
    sh = [_summary(heldout_scores(**dict(one, labels=list(rng.permutation(acts.labels)))), cluster_of, 200)
          for _ in range(n_shuffles)]
    out["shuffled labels"] = {m: bootstrap(np.mean, np.array([x[m].value for x in sh]), n_boot=n_boot)
                              for m in ("top1", "top5", "cluster")}
    return out
