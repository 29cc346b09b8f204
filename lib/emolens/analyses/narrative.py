"""How a story tells its feeling: simple, transparent text features, to ask what a principal component tracks.

The stories show an emotion without naming it, through the body (a tight chest, heavy legs), through what
people say to each other, or through the situation. If a direction in activation space follows *how* the
stories are told rather than *what* is felt, these features expose it. Story-level tests are run within
emotion (each feature and projection minus its emotion's mean), so an emotion that happens to be told through
the body cannot create the correlation on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# Our list: body parts and bodily sensations a narrator uses to show a feeling (lower case, whole words). It
# holds none of the 171 emotion words nor any word banned from their stories (a test checks), so it counts
# how a story is told, not which emotion words slipped in.
BODY_WORDS = frozenset("""
arm arms back belly blood bones breath breathe breathed breathing brow cheek cheeks chest chin ears eye eyelids
eyes face fingers fist fists flushed foot feet forehead gut hand hands head heart heartbeat hip hips jaw knee
knees leg legs limbs lip lips lungs mouth muscles neck nose palm palms pulse ribs shoulder shoulders skin
spine stomach sweat sweating teeth temples throat thumb toes tongue trembled trembling wrist wrists yawn yawned
ache ached aching dizzy heavy shiver shivered numb tingle tingling
""".split())

_WORD = re.compile(r"[a-z']+")
# Speech in double quotes (straight or curly), or in single quotes: an opening ' not preceded by a letter (so
# not an apostrophe inside "don't") up to a closing ' not followed by a letter; apostrophes between letters
# inside the quote ("'Don't go.'") belong to it.
_QUOTED = re.compile(r"[\"\u201c]([^\"\u201d]*)[\"\u201d]|(?<![A-Za-z])['\u2018]((?:[^'\u2019]|(?<=[A-Za-z])['\u2019](?=[A-Za-z]))+?)['\u2019](?![A-Za-z])")


def narrative_features(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per text: ``body`` (body words per 100 words), ``speech`` (share of characters inside quotation
    marks, double or single), ``words`` (word count)."""
    body, speech, words = [], [], []
    for t in texts:
        w = _WORD.findall(t.lower())
        body.append(100.0 * sum(x in BODY_WORDS for x in w) / max(len(w), 1))
        speech.append(sum(len(a) + len(b) for a, b in _QUOTED.findall(t)) / max(len(t), 1))
        words.append(float(len(w)))
    return {"body": np.array(body), "speech": np.array(speech), "words": np.array(words)}


def group_means(x: Any, groups: Sequence[Any], order: Sequence[Any]) -> np.ndarray:
    """Mean of ``x`` per group, in ``order``."""
    x, g = np.asarray(x, dtype=float), np.asarray(groups)
    return np.array([x[g == k].mean() for k in order])


def within_groups(x: Any, groups: Sequence[Any]) -> np.ndarray:
    """``x`` minus its group's mean (what is left once each group's average is removed)."""
    x, g = np.asarray(x, dtype=float), np.asarray(groups)
    out = x.copy()
    for k in np.unique(g):
        out[g == k] -= x[g == k].mean()
    return out


def within_group_r(points: Any, direction: Any, feature: Any, groups: Sequence[Any]) -> float:
    """Pearson r, within groups, between the points' projections on ``direction`` and ``feature``."""
    p = np.asarray(points, dtype=float) @ np.asarray(direction, dtype=float)
    a, b = within_groups(p, groups), within_groups(feature, groups)
    return float(np.corrcoef(a, b)[0, 1])


def random_direction_null(points: Any, feature: Any, groups: Sequence[Any], n: int = 200,
                          seed: int = 0) -> np.ndarray:
    """|within-group r| of ``n`` random unit directions: how strongly an arbitrary direction follows
    ``feature`` (the null for a component's story-level correlation)."""
    from emolens.stats import random_directions

    pts = np.asarray(points, dtype=float)
    return np.array([abs(within_group_r(pts, d, feature, groups))
                     for d in random_directions(n, pts.shape[1], seed)])


def components_vs_feature(scores: Any, texts: Sequence[str], labels: Sequence[Any], emotions: Sequence[Any],
                          feature: str = "body", k: int = 3, n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """Per-emotion correlation (bootstrap CI, permutation p) of the first ``k`` PC scores with the mean of a
    narrative feature over each emotion's stories."""
    from emolens.stats import correlation

    per_emotion = group_means(narrative_features(texts)[feature], labels, emotions)
    return {f"pc{i + 1}": correlation(np.asarray(scores)[:, i], per_emotion, n_boot=n_boot, n_perm=n_boot).as_dict()
            for i in range(k)}


def narrative_report(pcs: Any, story_points: Any, texts: Sequence[str], labels: Sequence[Any],
                     emotions: Sequence[Any], n_boot: int = 2000, n_random: int = 200) -> dict[str, Any]:
    """Notebook 04's question "what does PC1 follow?": for each narrative feature, its per-emotion correlation
    with the PC scores (:func:`components_vs_feature`), its within-emotion correlation with the stories'
    projections on PC1 and PC2, and the 95th percentile of the same for random directions.

    ``pcs`` is a :class:`~emolens.analyses.geometry.PCAResult` of the emotion vectors; ``story_points`` the
    stories' activations, denoised and centred like the vectors."""
    features = narrative_features(texts)
    out: dict[str, Any] = {"per_emotion": {}, "within_emotion": {}, "random_direction_null_95": {}}
    for name, f in features.items():
        out["per_emotion"][name] = components_vs_feature(pcs.scores, texts, labels, emotions, feature=name,
                                                         n_boot=n_boot)
        out["within_emotion"][name] = {f"pc{k + 1}": within_group_r(story_points, pcs.components[k], f, labels)
                                       for k in range(2)}
        out["random_direction_null_95"][name] = float(np.percentile(
            random_direction_null(story_points, f, labels, n=n_random, seed=0), 95))
    return out


def story_points(acts: Any, vectors: Any, layer: int) -> np.ndarray:
    """Each story's pooled activation at ``layer`` with the vectors' neutral PCs projected out, centred."""
    from emolens.vectors import project_out

    j = vectors.layer_index(layer)
    x = project_out(acts.means[:, acts.layers.index(layer)].float(), vectors.neutral_pcs[j].float()).numpy()
    return x - x.mean(0)


def covariance_directions(points: Any, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit directions drawn from a Gaussian with the points' covariance: random directions shaped like
    the data (they favour its high-variance axes, as a real component does), a harder null than isotropic ones."""
    pts = np.asarray(points, dtype=float)
    pts = pts - pts.mean(0)
    rng = np.random.default_rng(seed)
    # x = pts^T z / sqrt(N) has covariance pts^T pts / N without forming the d x d matrix
    d = (pts.T @ rng.standard_normal((pts.shape[0], n))).T
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def data_shaped_nulls(points: Any, feature: Any, groups: Sequence[Any], emotion_vectors: Any,
                      components: Any, n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """|within-group r| between story projections and ``feature`` for three nulls shaped like the data:
    directions with the stories' covariance, the emotion vectors themselves, and the later principal components
    (PC3 on). A component's |r| is telling only where it beats these, not just isotropic random directions."""
    pts = np.asarray(points, dtype=float)

    def rs(dirs: Any) -> np.ndarray:
        return np.array([abs(within_group_r(pts, d / np.linalg.norm(d), feature, groups)) for d in np.asarray(dirs)])

    return {"covariance": rs(covariance_directions(pts, n, seed)), "emotion_vectors": rs(emotion_vectors),
            "later_pcs": rs(np.asarray(components)[2:])}


def eta_squared(values: Any, factor: Sequence[Any], groups: Sequence[Any]) -> float:
    """Share of the within-group variance of ``values`` explained by a categorical ``factor`` (e.g. the narrative
    channel or the writer, within emotion): 0 when the factor's levels have equal means inside every group."""
    v = within_groups(values, groups)
    f = np.asarray([f"{g}|{x}" for g, x in zip(groups, factor)])
    explained = v - within_groups(v, f)
    return float((explained ** 2).sum() / max((v ** 2).sum(), 1e-300))


def factor_effect(points: Any, direction: Any, factor: Sequence[Any], groups: Sequence[Any], n: int = 200,
                  seed: int = 0) -> dict[str, float]:
    """How much a categorical factor (channel, writer) moves stories along ``direction`` within emotion:
    eta-squared, and the 95th percentile of the same for directions with the data's covariance."""
    pts = np.asarray(points, dtype=float)
    eta = eta_squared(pts @ np.asarray(direction, dtype=float), factor, groups)
    null = [eta_squared(pts @ d, factor, groups) for d in covariance_directions(pts, n, seed)]
    return {"eta_squared": eta, "null_95": float(np.percentile(null, 95)),
            "p": float((np.sum(np.array(null) >= eta) + 1) / (len(null) + 1))}


def style_factors(points: Any, pcs: Any, stories: Sequence[Any], emotion_vectors: Any, n: int = 200,
                  seed: int = 0) -> dict[str, Any]:
    """Corpus v2's question: once writer and channel are crossed with emotion, do they still move stories along
    PC1 and PC2 *within* emotion? For each factor (writer, narrative channel, person), eta-squared and its
    covariance-shaped null (:func:`factor_effect`); v1's stories, which have no planned channel, form their own
    level. Then the within-emotion body-word test of PC1 against the three data-shaped nulls of
    :func:`data_shaped_nulls` (their 95th percentiles, and the share of each null at or above PC1's |r|)."""
    pts = np.asarray(points, dtype=float)
    groups = [s.emotion for s in stories]
    factors = {"writer": [s.author for s in stories], "channel": [s.channel or "v1 (unplanned)" for s in stories],
               "person": [s.person for s in stories]}
    comps = np.asarray(pcs.components, dtype=float)
    out: dict[str, Any] = {"factors": {f: {f"pc{k + 1}": factor_effect(pts, comps[k], lv, groups, n, seed)
                                           for k in range(2)} for f, lv in factors.items()}}
    body = narrative_features([s.text for s in stories])["body"]
    r = abs(within_group_r(pts, comps[0], body, groups))
    nulls = data_shaped_nulls(pts, body, groups, emotion_vectors, comps, n, seed)
    out["body_pc1_within_emotion"] = {
        "abs_r": float(r),
        "nulls": {k: {"p95": float(np.percentile(v, 95)), "share_at_least": float(np.mean(v >= r)), "n": len(v)}
                  for k, v in nulls.items()}}
    return out
