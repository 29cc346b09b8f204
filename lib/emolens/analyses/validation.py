"""Held-out checks of emotion vectors: split by topic, classify unseen stories by their nearest vector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emolens.stats import cosine
from emolens.vectors import build_emotion_vectors

N_FOLDS = 5



def topk_accuracy(scores: Any, labels: Sequence[int], k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores."""
    s = np.asarray(scores)
    top = np.argsort(-s, axis=1)[:, :k]
    return float(np.mean([lab in row for lab, row in zip(labels, top)]))



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
    rows: np.ndarray | None = None  # which input stories these rows are (stories too short are left out)

    def accuracy(self, k: int = 1) -> np.ndarray:
        return np.array([topk_accuracy(self.scores[:, j], self.labels, k) for j in range(len(self.layers))])

    def top1_estimate(self, layer: int, n_boot: int = 2000) -> Any:
        """Top-1 accuracy at ``layer`` with a bootstrap CI over stories."""
        from emolens.stats import bootstrap

        j = self.layers.index(layer)
        return bootstrap(np.mean, (self.scores[:, j].argmax(1) == self.labels).astype(float), n_boot=n_boot)


def heldout_scores(story_means: Any, counts: Any, labels: Sequence[str], topic_ids: Sequence[int],
                   emotions: Sequence[str], layers: Sequence[int], neutral_cov: Any | None,
                   variance_fraction: float | None = 0.5, denoised: bool = True,
                   n_folds: int = N_FOLDS, random_directions_seed: int | None = None,
                   folds: Sequence[int] | None = None) -> HeldOut:
    """Cross-validate over topic folds: vectors from the other folds' stories, cosine scores for this fold's.

    ``folds`` (one integer per story) replaces the topic folds, e.g. by writer: vectors from some writers'
    stories, scores for another's. ``random_directions_seed`` replaces every emotion vector by a random
    direction of the same norm: the matched-norm null, which shares everything with the real run except the
    directions.
    """
    from dataclasses import replace

    folds = topic_folds(topic_ids, n_folds) if folds is None else np.asarray(folds)
    keep = np.asarray(counts) > 0
    lab = np.array([list(emotions).index(e) for e in labels])
    scores = np.zeros((len(labels), len(layers), len(emotions)))
    for f in np.unique(folds):
        train = np.where((folds != f) & keep)[0]
        test = np.where(folds == f)[0]
        ev = build_emotion_vectors(story_means[train], counts[train], [labels[i] for i in train], emotions, layers,
                                   neutral_cov if denoised else None, variance_fraction)
        if random_directions_seed is not None:
            import torch

            vecs = ev.vectors if denoised else ev.centred_raw()
            g = torch.Generator().manual_seed(random_directions_seed + int(f))
            r = torch.randn(vecs.shape, generator=g)
            r = r / r.norm(dim=-1, keepdim=True) * vecs.norm(dim=-1, keepdim=True)
            ev = replace(ev, vectors=r) if denoised else replace(ev, raw=r + ev.centre[None])
        for j, layer in enumerate(layers):
            # the one way a held-out story is scored: EmotionVectors.scores (training centre, neutral PCs)
            scores[test, j] = ev.scores(story_means[test, j].nan_to_num(), layer, denoised)
    return HeldOut(scores[keep], lab[keep], list(layers), list(emotions), np.where(keep)[0])


def _bag_of_words(texts: Sequence[str], labels: np.ndarray) -> tuple[Any, Any]:
    """The text baseline: TF-IDF over words and bigrams, then multinomial logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    return vec, LogisticRegression(C=10.0, max_iter=2000).fit(vec.fit_transform(list(texts)), labels)


def bag_of_words_scores(texts: Sequence[str], labels: Sequence[str], topic_ids: Sequence[int],
                        emotions: Sequence[str], n_folds: int = N_FOLDS, folds: Sequence[int] | None = None
                        ) -> HeldOut:
    """The text baseline on the same folds as the vectors (topic folds, or ``folds`` such as writers)."""
    folds = topic_folds(topic_ids, n_folds) if folds is None else np.asarray(folds)
    lab = np.array([list(emotions).index(e) for e in labels])
    scores = np.full((len(texts), 1, len(emotions)), -np.inf)
    for f in np.unique(folds):
        train, test = np.where(folds != f)[0], np.where(folds == f)[0]
        vec, clf = _bag_of_words([texts[i] for i in train], lab[train])
        proba = clf.predict_proba(vec.transform([texts[i] for i in test]))
        scores[np.ix_(test, [0], clf.classes_)] = proba[:, None, :]
    return HeldOut(scores, lab, [-1], list(emotions), np.arange(len(texts)))


def cluster_accuracy(scores: np.ndarray, labels: np.ndarray, cluster_of: Sequence[int]) -> np.ndarray:
    """Per story: does the top-scoring emotion fall in the true emotion's cluster? (0/1 array)"""
    c = np.asarray(cluster_of)
    return (c[np.argmax(scores, axis=1)] == c[labels]).astype(float)


def _summary(h: HeldOut, cluster_of: Sequence[int], n_boot: int, units: Sequence[Any]) -> dict[str, Any]:
    """Top-1, top-5 and cluster accuracy, each with a bootstrap CI that resamples ``units`` (one per input
    story: its topic, say), the unit the folds hold out together."""
    from emolens.stats import group_bootstrap

    s = h.scores[:, 0]
    g = np.asarray(units)[h.rows]
    top1 = (s.argmax(1) == h.labels).astype(float)
    top5 = np.array([lab in row for lab, row in zip(h.labels, np.argsort(-s, 1)[:, :5])], float)
    return {"top1": group_bootstrap(np.mean, top1, g, n_boot), "top5": group_bootstrap(np.mean, top5, g, n_boot),
            "cluster": group_bootstrap(np.mean, cluster_accuracy(s, h.labels, cluster_of), g, n_boot),
            "correct": top1}


SPLITS = ("topic", "writer")


def story_folds(acts: Any, split: str) -> np.ndarray:
    """Fold of each story: ``topic_id % 5`` ("topic"), or one fold per writer ("writer")."""
    if split == "topic":
        return topic_folds(acts.topic_ids)
    if split == "writer":
        writers = sorted({s.author for s in acts.stories})
        return np.array([writers.index(s.author) for s in acts.stories])
    raise ValueError(f"split {split!r} not allowed: choose one of {SPLITS}")


def classification_with_controls(acts: Any, layer: int, cluster_of: Sequence[int], variance_fraction: float = 0.5,
                                 n_shuffles: int = 10, bag_of_words: bool = True, n_boot: int = 2000,
                                 split: str = "topic",
                                 seed: int = 0) -> dict[str, dict[str, Any]]:
    """Held-out classification at one layer with its controls, each with a bootstrap CI over topics: denoised
    vectors, raw vectors, random directions of matched norm, shuffled labels, and (optionally) the bag-of-words
    text baseline. ``split``: "topic" (unseen topics) or "writer" (unseen writers: do the vectors carry the
    emotion or the writer's style?). When ``acts`` holds layer 0, the recipe there is a further words-alone
    control. ``acts`` is a :class:`emolens.vectors.CorpusActivations`."""
    j = acts.layers.index(layer)
    folds = story_folds(acts, split)
    one = dict(story_means=acts.means[:, [j]], counts=acts.counts, labels=acts.labels, topic_ids=acts.topic_ids,
               emotions=acts.emotions, layers=[layer], neutral_cov=acts.neutral_cov[[j]],
               variance_fraction=variance_fraction, folds=folds)
    runs = {"vectors": heldout_scores(**one),
            "vectors, raw": heldout_scores(**dict(one, neutral_cov=None), denoised=False),
            "random directions": heldout_scores(**one, random_directions_seed=seed)}
    if 0 in acts.layers and layer != 0:
        # the same recipe after the first block only: how far the words themselves, barely mixed, already go
        z = acts.layers.index(0)
        runs["vectors, layer 0"] = heldout_scores(**dict(one, story_means=acts.means[:, [z]], layers=[0],
                                                         neutral_cov=acts.neutral_cov[[z]]))
    if bag_of_words:
        runs["bag of words"] = bag_of_words_scores([s.text for s in acts.stories], acts.labels, acts.topic_ids,
                                                   acts.emotions, folds=folds)
    units = acts.topic_ids  # topics are the sampling unit of stories: CIs resample them whatever the split
    out = {k: _summary(h, cluster_of, n_boot, units) for k, h in runs.items()}
    from emolens.stats import bootstrap

    rng = np.random.default_rng(seed)
    sh = [_summary(heldout_scores(**dict(one, labels=list(rng.permutation(acts.labels)))), cluster_of, 200, units)
          for _ in range(n_shuffles)]
    out["shuffled labels"] = {m: bootstrap(np.mean, np.array([x[m].value for x in sh]), n_boot=n_boot)
                              for m in ("top1", "top5", "cluster")}
    return out


# ---- the pieces of notebooks 00, 02 and 03, as calls ------------------------------------------------------

def loo_classification(x: Any, labels: Sequence[int], n_classes: int, n_shuffles: int = 500,
                       seed: int = 0) -> dict[str, float]:
    """Leave-one-out nearest-centroid accuracy with its shuffled-label null and permutation p-value."""
    from emolens.stats import permutation_p

    acc = topk_accuracy(loo_centroid_scores(x, labels, n_classes), labels, 1)
    null = shuffled_label_accuracies(x, labels, n_classes, n_shuffles=n_shuffles, seed=seed)
    return {"accuracy": acc, "chance": 1 / n_classes, "shuffled_mean": float(null.mean()),
            "shuffled_sd": float(null.std()), "p": permutation_p(null, acc)}


def chance_levels(cluster_of: Sequence[int], n_clusters: int = 10) -> dict[str, float]:
    """Chance accuracy of top-1, top-5 and same-cluster guesses for E emotions in the given clusters."""
    E = len(cluster_of)
    sizes = np.bincount(np.asarray(cluster_of), minlength=n_clusters)
    return {"top1": 1 / E, "top5": min(5, E) / E, "cluster": float(np.sum((sizes / E) ** 2))}


def agreement(a_correct: Any, b_correct: Any) -> dict[str, float]:
    """How two classifiers' correct answers overlap: P(b right | a right), and each one's share of stories that
    only it gets right."""
    a, b = np.asarray(a_correct, float), np.asarray(b_correct, float)
    return {"b_given_a": float(np.mean(a * b) / max(np.mean(a), 1e-9)), "only_a": float(np.mean(a * (1 - b))),
            "only_b": float(np.mean(b * (1 - a)))}


def shuffled_label_null(acts: Any, layer: int, variance_fraction: float = 0.5, n: int = 10,
                        seed: int = 0) -> list[float]:
    """Held-out top-1 accuracy at ``layer`` after permuting the story labels, ``n`` times."""
    j = acts.layers.index(layer)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        perm = list(rng.permutation(acts.labels))
        h = heldout_scores(acts.means[:, [j]], acts.counts, perm, acts.topic_ids, acts.emotions, [layer],
                           acts.neutral_cov[[j]], variance_fraction)
        out.append(float(h.accuracy(1)[0]))
    return out


def fold_vectors(acts: Any, fold: int, layer: int, variance_fraction: float = 0.5) -> Any:
    """Vectors ``[E, d]`` at ``layer`` built without the stories of topic fold ``fold`` (for reading those
    stories as held-out text)."""
    folds = topic_folds(acts.topic_ids)
    train = np.where(folds != fold)[0]
    j = acts.layers.index(layer)
    return build_emotion_vectors(acts.means[train][:, [j]], acts.counts[train], [acts.labels[i] for i in train],
                                 acts.emotions, [layer], acts.neutral_cov[[j]], variance_fraction).at(layer)


def fold_examples(acts: Any, fold: int, emotions: Sequence[str]) -> list[Any]:
    """The first story of each emotion in topic fold ``fold``."""
    folds = topic_folds(acts.topic_ids)
    held = [s for s, f in zip(acts.stories, folds) if f == fold]
    return [next(s for s in held if s.emotion == e) for e in emotions if any(s.emotion == e for s in held)]


def implicit_scenarios(model: Any, vectors: Any, layer: int, scenarios: Sequence[Any], baseline: Sequence[str],
                       n_perm: int = 2000) -> dict[str, Any]:
    """Assistant-colon readouts of scenarios that evoke an emotion without naming it (paper Figure 2), relative
    to neutral user messages: the mean readout per scenario emotion, and how often the intended emotion ranks
    first or in the top 3, each against a label-permutation null. ``vectors`` is an EmotionVectors subset."""
    from emolens.readout import colon_readout
    from emolens.stats import rank_permutation_test

    bridge, spec = model
    names = vectors.emotions
    base = colon_readout(bridge, spec, list(baseline), vectors, layer).numpy().mean(0)
    R = colon_readout(bridge, spec, [s.text for s in scenarios], vectors, layer).numpy() - base
    true = np.array([names.index(s.emotion) for s in scenarios])
    out = rank_permutation_test(R, true, (1, 3), n_perm, seed=1)
    out["emotions"] = list(names)
    out["mean_readout"] = np.stack([R[true == i].mean(0) for i in range(len(names))])
    return out


def numeric_sweep(model: Any, directions: Any, names: Sequence[str], layer: int, template: Any,
                  random_dirs: Any, values: Sequence[float] | None = None, n_boot: int = 1000,
                  n_perm: int = 1000) -> dict[str, Any]:
    """Readouts at the Assistant colon as a number in the prompt grows (paper Figure 3): per direction, the
    Spearman correlation with the number (bootstrap CI, permutation p), whether its sign is the expected one,
    and the share of random directions that move at least as much (the null shaped like the question).

    ``directions`` ``[E, d]``; ``random_dirs`` ``[R, d]`` (e.g. ``stats.random_directions``)."""
    import torch

    from emolens.readout import colon_activations, project
    from emolens.stats import correlation, exceedance, spearman

    bridge, spec = model
    values = list(template.values if values is None else values)
    h = colon_activations(bridge, spec, [template.template.format(x=v) for v in values], layer)  # one pass
    r = project(h, torch.as_tensor(directions, dtype=torch.float32)).numpy()
    rr = project(h, torch.as_tensor(random_dirs, dtype=torch.float32)).numpy()
    random_rho = np.array([spearman(values, rr[:, j]) for j in range(rr.shape[1])])
    per = {}
    for i, e in enumerate(names):
        est = correlation(values, r[:, i], "spearman", n_boot=n_boot, n_perm=n_perm)
        exp = template.expected.get(e, 0)
        per[e] = dict(est.as_dict(), expected=exp, as_expected=(None if exp == 0 else bool(np.sign(est.value) == exp)),
                      random_share=exceedance(random_rho, est.value))
    return {"values": values, "readout": r, "random_rho": random_rho, "per_direction": per,
            "random_abs_rho_95": float(np.quantile(np.abs(random_rho), 0.95))}


def expected_direction_counts(sweeps: dict[str, dict[str, Any]], alpha: float = 0.05) -> dict[str, int]:
    """Across numeric sweeps: expected signs that hold, and those that also beat (1 - alpha) of random directions."""
    rows = [v for s in sweeps.values() for v in s.values()]
    checked = [v for v in rows if v["as_expected"] is not None]
    return {"hold": sum(bool(v["as_expected"]) for v in checked), "checked": len(checked),
            "hold_and_beat_random": sum(1 for v in checked if v["as_expected"] and v["random_share"] < alpha)}


def bag_of_words_transfer(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                          test_labels: Sequence[str], emotions: Sequence[str]) -> HeldOut:
    """The text baseline fitted on one corpus and tested on another (e.g. our stories -> a fork's, or writer
    held out): the same TF-IDF + logistic regression as :func:`bag_of_words_scores`."""
    names = list(emotions)
    yte = np.array([names.index(e) for e in test_labels])
    vec, clf = _bag_of_words(train_texts, np.array([names.index(e) for e in train_labels]))
    scores = np.full((len(test_texts), 1, len(names)), -np.inf)
    scores[:, 0, clf.classes_] = clf.predict_proba(vec.transform(list(test_texts)))
    return HeldOut(scores, yte, [-1], names)
