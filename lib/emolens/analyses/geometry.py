"""The geometry of emotion vectors: similarity, clusters, principal components, and their match to ratings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emolens.stats import cosine

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def as_array(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if hasattr(x, "detach") else np.asarray(x, np.float64)


def cosine_matrix(vectors: Any) -> np.ndarray:
    """Cosine similarity of every pair of rows (the emotion-by-emotion matrix of Figure 5)."""
    return cosine(vectors, vectors)


def cluster_order(sim: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage hierarchical clustering on cosine distance (Figure 5's ordering)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    dist = np.clip(1 - sim, 0, None)
    np.fill_diagonal(dist, 0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def kmeans_agreement(vectors: Any, reference: Sequence[str], k: int = 10, seeds: int = 10) -> dict[str, Any]:
    """k-means on unit vectors (several seeds) and its adjusted Rand index against reference cluster labels."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    v = as_array(vectors)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    aris, labels = [], None
    for s in range(seeds):
        lab = KMeans(k, n_init=10, random_state=s).fit_predict(v)
        aris.append(adjusted_rand_score(reference, lab))
        labels = lab if labels is None else labels
    return {"ari_mean": float(np.mean(aris)), "ari_min": float(np.min(aris)), "ari_max": float(np.max(aris)),
            "labels_seed0": labels.tolist()}


def shuffled_ari(reference: Sequence[str], labels: Sequence[int], n: int = 1000, seed: int = 0) -> np.ndarray:
    """Null distribution of the ARI when the reference labels are permuted."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    ref = np.asarray(reference)
    return np.array([adjusted_rand_score(rng.permutation(ref), labels) for _ in range(n)])


@dataclass
class PCAResult:
    scores: np.ndarray  # [E, k] coordinates of each emotion
    components: np.ndarray  # [k, d]
    explained: np.ndarray  # [k] variance fractions


def pca(vectors: Any, k: int = 10, anchors: dict[int, tuple[int, int]] | None = None) -> PCAResult:
    """PCA of the (centred) emotion vectors. ``anchors`` fixes signs without looking at any rating:
    ``{pc: (i_pos, i_neg)}`` flips component ``pc`` so that emotion ``i_pos`` scores above ``i_neg``."""
    x = as_array(vectors)
    x = x - x.mean(0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(k, len(s))
    scores, comps = u[:, :k] * s[:k], vt[:k]
    for pc, (i_pos, i_neg) in (anchors or {}).items():
        if pc < k and scores[i_pos, pc] < scores[i_neg, pc]:
            scores[:, pc] *= -1
            comps[pc] *= -1
    return PCAResult(scores, comps, (s[:k] ** 2) / (s ** 2).sum())


def second_order_similarity(sims: Sequence[np.ndarray]) -> np.ndarray:
    """Pearson correlation between the off-diagonal entries of each pair of similarity matrices."""
    iu = np.triu_indices(sims[0].shape[0], 1)
    flat = np.stack([s[iu] for s in sims])
    return np.corrcoef(flat)


def embedding_vectors(bridge: TransformerBridge, spec: Any, words: Sequence[str]) -> np.ndarray:
    """Static-embedding baseline: each word's mean input-embedding row over its tokens (with a leading space,
    as the word appears mid-sentence), centred across words."""
    import torch

    W = bridge.W_E if hasattr(bridge, "W_E") else bridge.original_model.get_input_embeddings().weight
    rows = []
    for w in words:
        ids = spec.tokenizer(" " + w, add_special_tokens=False).input_ids
        rows.append(W[torch.tensor(ids)].float().mean(0).detach().cpu().numpy())
    x = np.stack(rows).astype(np.float64)
    return x - x.mean(0)


def best_single_pc(scores: np.ndarray, target: np.ndarray, max_pc: int = 10) -> tuple[int, float]:
    """The principal component (0-based, among the first ``max_pc``) whose scores correlate most with ``target``."""
    rs = [abs(np.corrcoef(scores[:, j], target)[0, 1]) for j in range(min(max_pc, scores.shape[1]))]
    j = int(np.argmax(rs))
    return j, float(rs[j])


def cv_direction_r(x: np.ndarray, target: np.ndarray, n_pcs: int = 10, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated correlation of a linear readout (ridge on the top PCs) with ``target``: the best single
    direction for a rating, fitted on some emotions and tested on the others, so it is not tuned on its test data."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    pred = np.zeros(len(target))
    for tr, te in KFold(folds, shuffle=True, random_state=seed).split(x):
        p = pca(x[tr], n_pcs)
        z_tr = (x[tr] - x[tr].mean(0)) @ p.components.T
        z_te = (x[te] - x[tr].mean(0)) @ p.components.T
        pred[te] = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(z_tr, target[tr]).predict(z_te)
    return float(np.corrcoef(pred, target)[0, 1])


# Signs of PC1 and PC2 are fixed by anchor emotions, never by the ratings they are then compared with. PC1's
# pair differs mainly in valence; PC2's in arousal at equal valence (Warriner: both 6.89), so that it does not
# mix the two axes (the old pair afraid/calm differed in both).
PC_ANCHORS = {0: ("happy", "sad"), 1: ("inspired", "calm")}


def anchors_for(emotions: Sequence[str], anchors: dict[int, tuple[str, str]] | None = None) -> dict[int, tuple[int, int]]:
    """Row indices of each PC's anchor pair. Every anchor emotion must be present: on another emotion set, give
    pairs that are (``anchors={0: ("joyful", "gloomy"), ...}``), or ``anchors={}`` to leave signs arbitrary."""
    anchors = PC_ANCHORS if anchors is None else anchors
    names = list(emotions)
    missing = sorted({e for pair in anchors.values() for e in pair} - set(names))
    if missing:
        raise ValueError(f"PC sign anchors {missing} are not among these emotions; pass anchors={{pc: (high, low)}} "
                         "with emotions you have, or anchors={} to leave the signs arbitrary")
    return {pc: (names.index(a), names.index(b)) for pc, (a, b) in anchors.items()}


def geometry_summary(vectors: Any, emotions: Sequence[str], ratings: dict[str, Any], clusters: Sequence[str],
                     n_boot: int = 2000, kmeans_seeds: int = 5,
                     anchors: dict[int, tuple[str, str]] | None = None) -> dict[str, Any]:
    """PCA variance, PC1-valence and PC2-arousal correlations (bootstrap CIs, permutation p), the best single
    PC and a cross-validated direction for arousal, and k-means agreement with the paper's clusters."""
    from emolens.stats import correlation

    x = as_array(vectors)
    p = pca(x, 10, anchors_for(emotions, anchors))
    rated, val, aro = rated_arrays(emotions, ratings)
    out: dict[str, Any] = {"n_emotions": len(emotions), "n_rated": len(rated),
                           "explained": p.explained[:5].tolist()}
    if len(rated) >= 5:
        out["pc1_valence"] = correlation(p.scores[rated, 0], val, n_boot=n_boot, n_perm=n_boot).as_dict()
        out["pc2_arousal"] = correlation(p.scores[rated, 1], aro, n_boot=n_boot, n_perm=n_boot).as_dict()
        out["pc1_valence_spearman"] = correlation(p.scores[rated, 0], val, "spearman", n_boot, n_boot).as_dict()
        out["pc2_arousal_spearman"] = correlation(p.scores[rated, 1], aro, "spearman", n_boot, n_boot).as_dict()
        j, r = best_single_pc(p.scores[rated], aro)
        out["best_pc_arousal"] = {"pc": j + 1, "abs_r": r}
        if len(rated) >= 20:
            out["cv_direction_valence_r"] = cv_direction_r(x[rated], val)
            out["cv_direction_arousal_r"] = cv_direction_r(x[rated], aro)
    if len(set(clusters)) > 1 and len(emotions) > 10:
        km = kmeans_agreement(x, clusters, k=min(10, len(emotions) - 1), seeds=kmeans_seeds)
        null = shuffled_ari(clusters, km["labels_seed0"], n=500)
        out["kmeans_ari"] = {k: v for k, v in km.items() if k != "labels_seed0"}
        out["kmeans_ari"]["null_95pct"] = float(np.quantile(null, 0.95))
    return out


def rated_arrays(emotions: Sequence[str], ratings: dict[str, Any]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Indices of the rated emotions and their human valence and arousal, in the same order."""
    rated = [i for i, e in enumerate(emotions) if e in ratings]
    return (rated, np.array([ratings[emotions[i]].valence for i in rated]),
            np.array([ratings[emotions[i]].arousal for i in rated]))


def extreme_pairs(sim: np.ndarray, names: Sequence[str], k: int = 6) -> dict[str, list[tuple[str, str, float]]]:
    """The ``k`` most similar and most opposite pairs of a similarity matrix."""
    iu = np.triu_indices(len(sim), 1)
    order = np.argsort(sim[iu])
    pairs = [(names[iu[0][t]], names[iu[1][t]], round(float(sim[iu][t]), 2)) for t in order]
    return {"most_similar": pairs[-k:][::-1], "most_opposite": pairs[:k]}


def layer_sweep(vectors: Any, ratings: dict[str, Any], anchors: dict[int, tuple[str, str]] | None = None
                ) -> dict[str, Any]:
    """At every layer of an EmotionVectors: PC1 vs valence and PC2 vs arousal (Pearson r), and the second-order
    similarity of the emotion-by-emotion similarity matrices across layers (paper: stable over 14 layers)."""
    rated, val, aro = rated_arrays(vectors.emotions, ratings)
    a = anchors_for(vectors.emotions, anchors)
    r_val, r_aro, sims = [], [], []
    for layer in vectors.layers:
        x = vectors.at(layer).numpy()
        p = pca(x, 3, a)
        r_val.append(float(np.corrcoef(p.scores[rated, 0], val)[0, 1]))
        r_aro.append(float(np.corrcoef(p.scores[rated, 1], aro)[0, 1]))
        sims.append(cosine_matrix(x))
    return {"layers": list(vectors.layers), "pc1_valence_r": r_val, "pc2_arousal_r": r_aro,
            "second_order": second_order_similarity(sims)}


BASELINES = ("static embedding", "raw (undenoised)", "denoised vectors")


def baseline_vectors(model: Any, vectors: Any, layer: int) -> dict[str, np.ndarray]:
    """The three sets compared in notebook 04: the words' static input embeddings, the centred raw means, and
    the denoised vectors, all for the same emotions."""
    bridge, spec = model
    return {"static embedding": embedding_vectors(bridge, spec, vectors.emotions),
            "raw (undenoised)": vectors.at(layer, denoised=False).float().numpy(),
            "denoised vectors": vectors.at(layer).float().numpy()}


def baselines(model: Any, vectors: Any, layer: int, ratings: dict[str, Any], clusters: Sequence[str],
              n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """:func:`geometry_summary` of each of :func:`baseline_vectors`."""
    return {k: geometry_summary(v, vectors.emotions, ratings, clusters, n_boot=n_boot)
            for k, v in baseline_vectors(model, vectors, layer).items()}


def model_geometry(model: Any, acts: Any, ratings: dict[str, Any], cluster_of: dict[str, str],
                   variance_fraction: float = 0.5, n_boot: int = 2000,
                   precomputed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One model's row of the cross-model table (notebook 04): the baselines' geometry summaries at its probe
    layer, and the body-word test of its first PCs. ``acts`` are its corpus activations at that layer."""
    from emolens.analyses.narrative import components_vs_feature

    bridge, spec = model
    ev = acts.vectors(variance_fraction, spec=spec)
    layer = spec.probe_layer
    row: dict[str, Any] = {"stories_per_emotion": int(len(acts.stories) / max(len(ev.emotions), 1)),
                           "n_neutral": acts.n_neutral, "layer": layer, "n_layers": spec.n_layers, "dtype": spec.dtype}
    row.update(precomputed or baselines(model, ev, layer, ratings, [cluster_of[e] for e in ev.emotions], n_boot))
    p = pca(ev.at(layer).float().numpy(), 10, anchors_for(ev.emotions))
    row["body_words_vs_pcs"] = components_vs_feature(p.scores, [s.text for s in acts.stories], acts.labels,
                                                     ev.emotions, n_boot=n_boot)
    return row


def per_writer_geometry(acts: Any, layer: int, ratings: dict[str, Any], clusters: Sequence[str],
                        variance_fraction: float = 0.5, n_boot: int = 500) -> dict[str, dict[str, Any]]:
    """The geometry summary from each writer's stories alone, for every writer who wrote every emotion (v2's
    crossed writers): one writer's style is constant across emotions, so whatever PC1 and PC2 follow here is not
    the difference between writers. Each writer has only a few stories per emotion, so expect noisier vectors
    (correlations biased towards zero) than from the whole corpus."""
    from emolens.vectors import build_emotion_vectors

    j = acts.layers.index(layer)
    writers = sorted({s.author for s in acts.stories})
    out: dict[str, dict[str, Any]] = {}
    for w in writers:
        idx = [i for i, s in enumerate(acts.stories) if s.author == w]
        if {acts.labels[i] for i in idx} != set(acts.emotions):
            continue
        v = build_emotion_vectors(acts.means[idx][:, [j]], acts.counts[idx], [acts.labels[i] for i in idx],
                                  acts.emotions, [layer], acts.neutral_cov[[j]], variance_fraction)
        s = geometry_summary(v.at(layer), acts.emotions, ratings, clusters, n_boot=n_boot)
        out[w] = {"n_stories": len(idx), **{k: s[k] for k in ("pc1_valence", "pc2_arousal", "cv_direction_valence_r",
                                                              "explained") if k in s}}
    return out
