"""Notebook 07's analyses: present- and other-speaker probes and their geometry, user vs Assistant readouts,
deflection, and steering measured with the dissociation measure (methods in :mod:`emolens.speakers`).

Every statistic here comes with its control: probe cosines beside mismatched emotions and a label permutation,
held-out accuracy beside shuffled labels, deflection readouts beside their matched open controls, steering beside
the unsteered model. Intervals are 95% percentile bootstraps over the unit named in each docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emolens.speakers import (
    DialogueProbes,
    dialogue_probes,
    dissociation,
    lexicon_rates,
    message_positions,
    read_back,
    span_means,
    speaker_groups,
    torch_float,
)
from emolens.stats import Estimate, bootstrap, cosine, group_bootstrap, permutation_p, spearman

if TYPE_CHECKING:
    from emolens.data.dialogues import Dialogue
    from emolens.models.spec import Model
    from emolens.vectors import EmotionVectors

N_FOLDS = 5


# ---- present- and other-speaker probes ------------------------------------------------------------------


@dataclass
class Samples:
    """Pooled activations at one speaker group's tokens with the emotion each row is labelled by."""

    x: Any  # [m, d]
    labels: list[str]
    topics: list[int]


def probe_samples(dialogues: Sequence[Dialogue], pooled: Any, rendering: str) -> dict[str, Samples]:
    """The 2x2 (or, for two named speakers, first/second) sample sets: ``"present:G"`` is pooled at group G's
    tokens labelled by G's emotion, ``"other:G"`` at G's tokens labelled by the other speaker's emotion."""
    import torch

    x = torch_float(pooled)
    if x.dim() != 3 or x.shape[:2] != (len(dialogues), 2):
        raise ValueError(f"pooled must be [n_dialogues, 2, d], got {tuple(x.shape)} for {len(dialogues)} dialogues")
    rows: dict[str, tuple[list[Any], list[str], list[int]]] = {}
    for i, d in enumerate(dialogues):
        groups = speaker_groups(d, rendering)
        for s in (0, 1):
            for kind, emo in (("present", d.emotions[s]), ("other", d.emotions[1 - s])):
                r = rows.setdefault(f"{kind}:{groups[s]}", ([], [], []))
                r[0].append(x[i, s])
                r[1].append(emo)
                r[2].append(d.topic_id)
    return {k: Samples(torch.stack(v[0]), v[1], v[2]) for k, v in sorted(rows.items())}


def covered_emotions(samples: dict[str, Samples], emotions: Sequence[str]) -> list[str]:
    """The emotions that every sample set has at least one row for (a subset of dialogues may miss some)."""
    return [e for e in emotions if all(e in s.labels for s in samples.values())]


def build_probes(samples: dict[str, Samples], emotions: Sequence[str], neutral_pcs: Any) -> dict[str, DialogueProbes]:
    """One set of probes per sample set, centred and denoised as the story vectors were."""
    return {k: dialogue_probes(s.x, s.labels, emotions, neutral_pcs) for k, s in samples.items()}


def mean_diagonal_cosine(a: Any, b: Any, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean over emotions of cos(a[e], b[e]) for two ``[E, d]`` sets in the same emotion order, with a bootstrap
    CI over emotions, the mean mismatched-emotion cosine beside it, and a permutation p-value (emotions of b
    shuffled)."""
    c = cosine(a, b)
    if c.shape[0] < 3 or c.shape[0] != c.shape[1]:
        raise ValueError(f"need two sets of at least 3 emotions in the same order, got {c.shape}")
    diag = np.diag(c)
    est = bootstrap(np.mean, diag, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed + 1)
    E = len(diag)
    null = [float(np.mean(c[np.arange(E), rng.permutation(E)])) for _ in range(n_perm)]
    off = c[~np.eye(E, dtype=bool)].mean() if E > 1 else float("nan")
    return {"matched": Estimate(est.value, est.low, est.high, permutation_p(null, est.value), E),
            "mismatched_mean": float(off), "per_emotion": diag}


def probe_cosines(probes: dict[str, Any], n_boot: int = 2000, n_perm: int = 2000) -> dict[str, Any]:
    """:func:`mean_diagonal_cosine` for every pair of probe sets (each a ``DialogueProbes`` or an ``[E, d]``
    tensor in the same emotion order): ``{"names", "matrix" [k, k] of matched means, "pairs": {...}}``."""
    names = list(probes)
    vec = {k: (v.vectors if isinstance(v, DialogueProbes) else v) for k, v in probes.items()}
    M = np.eye(len(names))
    pairs = {}
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            r = mean_diagonal_cosine(vec[a], vec[b], n_boot, n_perm, seed=i * 31 + j)
            M[i, j] = M[j, i] = r["matched"].value
            pairs[f"{a} | {b}"] = r
    return {"names": names, "matrix": M, "pairs": pairs}


def geometry_similarity(a: Any, b: Any, n_perm: int = 2000, seed: int = 0) -> Estimate:
    """How alike two sets' emotion geometries are, whatever their directions: Spearman correlation of the upper
    triangles of their ``[E, E]`` cosine matrices, with a Mantel permutation p-value (emotions of b shuffled)
    and a bootstrap CI over emotions."""
    ca, cb = cosine(a, a), cosine(b, b)
    E = ca.shape[0]
    if E < 4:
        raise ValueError(f"need at least 4 emotions to compare geometries, got {E}")
    iu = np.triu_indices(E, 1)
    value = spearman(ca[iu], cb[iu])
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_perm):
        p = rng.permutation(E)
        null.append(spearman(ca[iu], cb[p][:, p][iu]))
    boots = []
    for _ in range(min(n_perm, 500)):
        s = np.unique(rng.integers(0, E, E))
        if len(s) >= 4:
            ju = np.triu_indices(len(s), 1)
            boots.append(spearman(ca[np.ix_(s, s)][ju], cb[np.ix_(s, s)][ju]))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return Estimate(value, float(lo), float(hi), permutation_p(null, value), E)


def heldout_accuracy(samples: Samples, emotions: Sequence[str], neutral_pcs: Any, n_shuffles: int = 20,
                     n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Top-1 accuracy of probes built on four topic folds (``topic_id % 5``) and scored on the fifth, beside the
    same pipeline with the training labels shuffled. The CI resamples topics; ``p`` is the share of shuffles
    that reach the real accuracy (+1 corrected)."""
    labels = np.array([emotions.index(e) for e in samples.labels])
    folds = np.asarray(samples.topics) % N_FOLDS
    rng = np.random.default_rng(seed)

    def run(train_labels: np.ndarray) -> np.ndarray:
        correct = np.zeros(len(labels), bool)
        for f in range(N_FOLDS):
            te, tr = folds == f, folds != f
            if not te.any():
                continue
            present = [e for e in range(len(emotions)) if (train_labels[tr] == e).any()]
            p = dialogue_probes(samples.x[np.where(tr)[0]], [emotions[i] for i in train_labels[tr]],
                                [emotions[i] for i in present], neutral_pcs)
            s = p.scores(samples.x[np.where(te)[0]])
            correct[te] = np.asarray(present)[s.argmax(1)] == labels[te]
        return correct

    correct = run(labels)
    est = group_bootstrap(np.mean, correct.astype(float), samples.topics, n_boot=n_boot, seed=seed)
    null = [float(run(rng.permutation(labels)).mean()) for _ in range(n_shuffles)]
    return {"accuracy": Estimate(est.value, est.low, est.high, permutation_p(null, est.value), len(labels)),
            "shuffled_mean": float(np.mean(null)), "shuffled_95": float(np.quantile(null, 0.95)),
            "chance": 1 / len(set(samples.labels))}


def story_alignment(probes: dict[str, DialogueProbes], story: EmotionVectors, layer: int, n_boot: int = 2000,
                    n_perm: int = 2000) -> dict[str, Any]:
    """Each probe set against the story vectors, over the emotions both have."""
    out = {}
    for k, p in probes.items():
        common = [e for e in p.emotions if e in story.emotions]
        if len(common) < 2:
            continue
        a = p.vectors[[p.emotions.index(e) for e in common]]
        b = story.subset(common).at(layer)
        out[k] = mean_diagonal_cosine(a, b, n_boot, n_perm, seed=7)
    return out


# ---- user vs Assistant ----------------------------------------------------------------------------------


def user_and_colon_positions(spec: Any, user: str) -> tuple[list[int], int, int]:
    """Token ids of a one-message exchange ending at the Assistant colon, the user's last own token and the
    colon (the last token of the Assistant header)."""
    msgs = [{"role": "user", "content": user}]
    ids, pos = message_positions(spec, msgs, add_generation_prompt=True)
    colon_ids, colon = spec.assistant_colon_position(msgs)
    if colon_ids != ids:
        raise ValueError(f"{spec.name}: the exchange tokenizes differently for the colon and the user span")
    return ids, pos[0][-1], colon


def position_readouts(model: Model, vectors: EmotionVectors, layer: int, users: Sequence[str]) -> dict[str, Any]:
    """Raw cosine readouts ``[n, E]`` at the user's last token and at the Assistant colon of each message."""
    bridge, spec = model
    vectors.check_model(spec)
    ids, last, colon = zip(*(user_and_colon_positions(spec, u) for u in users))
    V = vectors.at(layer)
    u = span_means(bridge, spec, ids, [[p] for p in last], layer, progress=False)
    a = span_means(bridge, spec, ids, [[p] for p in colon], layer, progress=False)
    return {"user": cosine(u, V), "colon": cosine(a, V)}


def reply_readouts(model: Model, vectors: EmotionVectors, layer: int, users: Sequence[str],
                   replies: Sequence[str]) -> np.ndarray:
    """Cosine readout ``[n, E]`` of each reply's mean residual over its own tokens, read in its exchange."""
    bridge, spec = model
    seqs, pos = [], []
    for u, r in zip(users, replies):
        if not r.strip():
            raise ValueError(f"empty reply to {u[:40]!r}: nothing to read")
        ids, p = message_positions(spec, [{"role": "user", "content": u}, {"role": "assistant", "content": r}])
        seqs.append(ids)
        pos.append(p[1])
    return cosine(span_means(bridge, spec, seqs, pos, layer, progress=False), vectors.at(layer))


def centred_correlation(x: Any, y: Any, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Pearson r over all (prompt, emotion) cells after removing each emotion's mean over prompts from both, so
    an emotion that reads high everywhere adds nothing; the CI resamples prompts (rows)."""
    return bootstrap(_centred_r, np.asarray(x, float), np.asarray(y, float), n_boot=n_boot, seed=seed)


def _centred_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two ``[n, E]`` arrays after removing each column's mean (NaN when either has no spread)."""
    a, b = (a - a.mean(0)).ravel(), (b - b.mean(0)).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def colon_vs_user(user: Any, colon: Any, reply: Any, n_boot: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """The Figure 10-11 numbers: r(user, colon), r(colon, reply), r(user, reply) and the difference of the last
    two, each over (prompt, emotion) cells centred per emotion, CIs and the difference resampling prompts."""
    U, A, R = (np.asarray(m, float) for m in (user, colon, reply))
    if not U.shape == A.shape == R.shape:
        raise ValueError(f"readouts must share a shape: {U.shape}, {A.shape}, {R.shape}")

    corr = _centred_r
    n = len(U)
    stack = np.stack([U, A, R], 1)  # [n, 3, E]: rows resampled together

    def diff(s: np.ndarray) -> float:
        return corr(s[:, 1], s[:, 2]) - corr(s[:, 0], s[:, 2])

    d = bootstrap(diff, stack, n_boot=n_boot, seed=seed)
    return {"user_vs_colon": centred_correlation(U, A, n_boot, seed),
            "colon_predicts_reply": centred_correlation(A, R, n_boot, seed),
            "user_predicts_reply": centred_correlation(U, R, n_boot, seed),
            "colon_minus_user": Estimate(d.value, d.low, d.high, n=n)}


# ---- generation, cached ---------------------------------------------------------------------------------


def replies(model: Model, users: Sequence[str], max_new_tokens: int, steer: tuple[Any, int, float] | None = None,
            vectors: EmotionVectors | None = None, progress: bool = True) -> list[str]:
    """Greedy replies to each user message, optionally steered along ``steer = (direction [d], layer, alpha)``
    (alpha a fraction of ``vectors``' typical residual norm at that layer, every position steered); cached by
    model, prompts, length and the steering direction's content."""
    import torch
    from tqdm.auto import tqdm

    from emolens.cache import cached, content_hash
    from emolens.generate import reply
    from emolens.interventions import steering

    bridge, spec = model
    if steer is not None and vectors is None:
        raise ValueError("steering needs the vectors whose residual norm sets the strength")
    key = {"model": spec.name, "weights": spec.weight_sha256 or spec.weight_source, "dtype": spec.dtype,
           "users": content_hash(list(users)), "max_new_tokens": max_new_tokens,
           "steer": None if steer is None else [content_hash([round(float(v), 6) for v in torch_float(steer[0])]),
                                                 steer[1], steer[2]]}

    def compute() -> tuple[dict[str, Any], dict[str, Any]]:
        out = []
        for u in tqdm(users, desc="replies", disable=not progress, leave=False):
            if steer is None:
                out.append(reply(bridge, spec, u, max_new_tokens=max_new_tokens))
            else:
                d, layer, alpha = steer
                with steering(bridge, spec, torch_float(d), layer, alpha, vectors.residual_norm(layer)):
                    out.append(reply(bridge, spec, u, max_new_tokens=max_new_tokens))
        return {"n": torch.tensor([len(out)])}, {"texts": out}

    _, meta = cached("replies", key, compute)
    return list(meta["texts"])


# ---- deflection -----------------------------------------------------------------------------------------


def pair_key(dialogue: Dialogue) -> str:
    """The matched-pair key of a deflection dialogue: "deflect-angry-03" and "open-angry-03" share "angry-03"."""
    return dialogue.id.split("-", 1)[1]


def story_space(vectors: EmotionVectors, layer: int, fraction: float = 0.99) -> Any:
    """Orthonormal ``[k, d]`` principal directions of the story vectors that explain ``fraction`` of their
    variance (the paper's check of what a deflection vector holds beyond the story emotions)."""
    import torch

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    V = vectors.at(layer).double()
    _, s, vt = torch.linalg.svd(V - V.mean(0), full_matrices=False)
    var = (s ** 2).cumsum(0) / (s ** 2).sum()
    k = int((var < fraction - 1e-12).sum()) + 1
    return vt[:k].float()


def norm_left(x: Any, basis: Any) -> np.ndarray:
    """Share of each row's norm left after projecting out the span of orthonormal ``basis`` rows."""
    from emolens.vectors import project_out

    x = torch_float(x)
    return (project_out(x, basis).norm(dim=-1) / x.norm(dim=-1).clamp(min=1e-12)).numpy()


def deflection_study(dialogues: Sequence[Dialogue], pooled: Any, vectors: EmotionVectors, layer: int,
                     fraction: float = 0.99, n_boot: int = 2000, n_shuffles: int = 20,
                     n_random: int = 500) -> dict[str, Any]:
    """Deflection vectors and where they fire. ``pooled [n, 2, d]`` are the speaker activations of the
    dialogues (plain rendering with the context line); the character who feels the target is speaker 0.

    Returns: deflection and open vectors (all dialogues); their matched cosine with the story vectors (beside
    mismatched emotions); the share of their norm left outside the story space against random directions;
    held-out (pair folds) readouts of each dialogue's own target at the character's tokens in deflect vs open
    dialogues, for the deflection vectors and for the story vectors of the real and the shown feeling (paired by
    matched pair); held-out target accuracy of the deflection probe against shuffled labels."""
    from emolens.stats import random_directions

    x = torch_float(pooled)[:, 0]
    targets = list(dict.fromkeys(d.emotions[0] for d in dialogues))
    pcs = vectors.neutral_pcs[vectors.layer_index(layer)]
    kind = np.array([d.variant for d in dialogues])
    lab = [d.emotions[0] for d in dialogues]
    idx = {v: np.where(kind == v)[0] for v in ("deflect", "open")}
    if any(len(i) == 0 for i in idx.values()):
        raise ValueError("deflection_study needs both 'deflect' dialogues and their 'open' controls")
    probes = {v: dialogue_probes(x[i], [lab[j] for j in i], targets, pcs) for v, i in idx.items()}
    common = [t for t in targets if t in vectors.emotions]
    out: dict[str, Any] = {"targets": targets, "story_targets": common}
    if len(common) >= 2:
        sv = vectors.subset(common).at(layer)
        for v, p in probes.items():
            out[f"{v}_vs_story"] = mean_diagonal_cosine(p.vectors[[targets.index(t) for t in common]], sv, n_boot)
    basis = story_space(vectors, layer, fraction)
    rand = random_directions(n_random, x.shape[1], seed=3)
    out["story_space_dims"] = int(basis.shape[0])
    out["norm_left"] = {v: bootstrap(np.mean, norm_left(p.vectors, basis), n_boot=n_boot) for v, p in probes.items()}
    out["norm_left_random"] = float(norm_left(rand, basis).mean())
    # held out: folds by matched pair number, so a deflect dialogue and its control are always tested together
    keys = [pair_key(d) for d in dialogues]
    fold = np.array([int(k.rsplit("-", 1)[1]) % N_FOLDS for k in keys])
    own = np.full(len(dialogues), np.nan)
    for f in range(N_FOLDS):
        tr = np.where((fold != f) & (kind == "deflect"))[0]
        te = np.where(fold == f)[0]
        p = dialogue_probes(x[tr], [lab[j] for j in tr], targets, pcs)
        s = p.scores(x[te])
        own[te] = s[np.arange(len(te)), [targets.index(lab[j]) for j in te]]
    story = vectors.scores(x, layer)
    real = np.array([story[i, vectors.emotions.index(d.emotions[0])] if d.emotions[0] in vectors.emotions
                     else np.nan for i, d in enumerate(dialogues)])
    shown_of = {pair_key(d): d.shown for d in dialogues if d.variant == "deflect"}
    shown = np.array([story[i, vectors.emotions.index(shown_of[k])] if shown_of.get(k) in vectors.emotions
                      else np.nan for i, k in enumerate(keys)])
    out["heldout"] = {name: _paired_gap(vals, keys, kind, n_boot) for name, vals in
                      (("deflection_vector_own_target", own), ("story_vector_real_feeling", real),
                       ("story_vector_shown_feeling", shown))}
    samples = Samples(x[idx["deflect"]], [lab[j] for j in idx["deflect"]],
                      [int(keys[j].rsplit("-", 1)[1]) for j in idx["deflect"]])
    out["deflection_probe_accuracy"] = heldout_accuracy(samples, targets, pcs, n_shuffles, n_boot)
    out["probes"] = {v: p.vectors for v, p in probes.items()}
    out["per_dialogue"] = {"own": own, "real": real, "shown": shown, "kind": kind.tolist(), "keys": keys}
    return out


def _paired_gap(values: np.ndarray, keys: Sequence[str], kind: np.ndarray, n_boot: int) -> dict[str, Any]:
    """Mean readout in deflect and open dialogues and their paired difference (deflect - open), CI over pairs."""
    by: dict[str, dict[str, float]] = {}
    for v, k, t in zip(values, keys, kind):
        by.setdefault(k, {})[t] = v
    pairs = [(b["deflect"], b["open"]) for b in by.values() if "deflect" in b and "open" in b
             and np.isfinite(b["deflect"]) and np.isfinite(b["open"])]
    if len(pairs) < 2:
        return {"n_pairs": len(pairs)}
    d, o = np.array(pairs).T
    return {"deflect": bootstrap(np.mean, d, n_boot=n_boot).as_dict(), "open": bootstrap(np.mean, o, n_boot=n_boot).as_dict(),
            "deflect_minus_open": bootstrap(np.mean, d - o, n_boot=n_boot).as_dict(), "n_pairs": len(pairs)}


# ---- steering measured with the dissociation measure ----------------------------------------------------


def choice_pairs(activities: Sequence[Any], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (pleasant, unpleasant) activity pairs: a helpful/engaging/social/self-curiosity activity against an
    aversive, misaligned or unsafe one, drawn at random."""
    good = [a.text for a in activities if a.category in ("helpful", "engaging", "social", "self_curiosity")]
    bad = [a.text for a in activities if a.category in ("aversive", "misaligned", "unsafe")]
    if not good or not bad:
        raise ValueError("need both pleasant and unpleasant activities")
    rng = np.random.default_rng(seed)
    return [(good[rng.integers(len(good))], bad[rng.integers(len(bad))]) for _ in range(n)]


def pleasant_choice(model: Model, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """P(the pleasant option) per pair, averaged over the two presentation orders (cancels position bias)."""
    from emolens.analyses.preferences import choice_probabilities

    acts = [a for p in pairs for a in p]
    order = [(2 * k, 2 * k + 1) for k in range(len(pairs))] + [(2 * k + 1, 2 * k) for k in range(len(pairs))]
    # compared with runs under steering hooks, which run every prompt in full: so does this one
    p = choice_probabilities(model, acts, order, prefix_reuse=False)
    n = len(pairs)
    return (p[:n] + (1 - p[n:])) / 2


def colon_state(model: Model, vectors: EmotionVectors, layer: int, users: Sequence[str], emotion: str) -> np.ndarray:
    """The model's own state at its Assistant colon: the denoised score of ``emotion`` there, per message."""
    bridge, spec = model
    ids, _, colon = zip(*(user_and_colon_positions(spec, u) for u in users))
    x = span_means(bridge, spec, ids, [[c] for c in colon], layer, progress=False)
    return vectors.scores(x, layer)[:, vectors.emotion_index(emotion)]


def expression_measures(model: Model, vectors: EmotionVectors, layer: int, texts: Sequence[str],
                        emotion: str) -> dict[str, np.ndarray]:
    """Expressed ``emotion`` in generated texts, three ways: emotion words per 100 words (all 171 lists),
    Warriner affect (mean |valence - 5|) and the story-vector score of ``emotion`` when the text is read back."""
    lex = lexicon_rates(texts, emotion)
    rb = read_back(model, vectors, texts, layer)[:, vectors.emotion_index(emotion)]
    return {"emotion_words": lex["emotion_words"], "affect": lex["affect"], "read_back": rb}


def steering_dissociation(model: Model, vectors: EmotionVectors, layer: int, emotions: Sequence[str],
                          alphas: Sequence[float], users: Sequence[str], pairs: Sequence[tuple[str, str]],
                          max_new_tokens: int, n_boot: int = 2000, progress: bool = True) -> dict[str, Any]:
    """Steer along each emotion's story vector at each strength, and set two behaviours (P(pleasant choice) on
    the activity ``pairs``; the colon state of that emotion on ``users``) against the expressed emotion of the
    replies to ``users`` (:func:`expression_measures`), each condition against the unsteered model."""
    base_text = replies(model, users, max_new_tokens, progress=progress)
    base = {"choice": pleasant_choice(model, pairs), "texts": base_text}
    out: dict[str, Any] = {"baseline_texts": base_text, "conditions": {}}
    for e in emotions:
        base_expr = expression_measures(model, vectors, layer, base_text, e)
        base_colon = colon_state(model, vectors, layer, users, e)
        for a in alphas:
            d = vectors.vector(e, layer)
            texts = replies(model, users, max_new_tokens, (d, layer, a), vectors, progress)
            with vectors.steer(model, e, a, layers=layer):
                choice = pleasant_choice(model, pairs)
                colon = colon_state(model, vectors, layer, users, e)
            expr = expression_measures(model, vectors, layer, texts, e)
            out["conditions"][f"{e} {a:+g}"] = {
                "emotion": e, "alpha": a, "texts": texts,
                "choice": dissociation(base["choice"], choice, base_expr, expr, n_boot=n_boot).as_dict(),
                "colon": dissociation(base_colon, colon, base_expr, expr, n_boot=n_boot).as_dict(),
                "means": {"choice": [float(base["choice"].mean()), float(choice.mean())],
                          "colon": [float(base_colon.mean()), float(colon.mean())],
                          **{k: [float(np.nanmean(base_expr[k])), float(np.nanmean(v))] for k, v in expr.items()}}}
    return out


def greeting_steer(model: Model, vectors: EmotionVectors, layer: int, probes: dict[str, DialogueProbes],
                   emotion: str, alpha: float, greeting: str, max_new_tokens: int) -> dict[str, Any]:
    """A short greeting answered with no steering and steered along each probe set's vector for ``emotion``, each
    reply read back with the story vectors (score of ``emotion``)."""
    texts = {"unsteered": replies(model, [greeting], max_new_tokens, progress=False)[0]}
    for k, p in probes.items():
        d = p.vectors[p.emotions.index(emotion)]
        texts[k] = replies(model, [greeting], max_new_tokens, (d, layer, alpha), vectors, progress=False)[0]
    scores = read_back(model, vectors, list(texts.values()), layer)[:, vectors.emotion_index(emotion)]
    return {k: {"text": t, "read_back": float(s)} for (k, t), s in zip(texts.items(), scores)}


# ---- verdicts -------------------------------------------------------------------------------------------


def _excludes(e: dict[str, Any] | Estimate, value: float = 0.0, above: bool = True) -> bool:
    d = e.as_dict() if isinstance(e, Estimate) else e
    return d["low"] > value if above else d["high"] < value


def verdicts(ua: dict[str, Estimate], cos: dict[str, Any], accuracy: dict[str, dict[str, Any]],
             deflection: dict[str, Any], steering: dict[str, Any]) -> dict[str, str]:
    """One sentence per claim of the paper, decided by the intervals (never by the point estimate alone)."""
    out = {}
    lo_u = ua["user_vs_colon"]
    out["user_vs_colon_distinct"] = (
        f"reproduced: the colon readout differs from the user-token readout (r = {lo_u})"
        if lo_u.high < 0.5 else f"not reproduced: the colon readout goes with the user-token readout (r = {lo_u}; "
        "the paper's 0.11 would mean they are nearly independent)")
    diff = ua["colon_minus_user"]
    out["colon_predicts_reply_better"] = (
        f"reproduced: r(colon, reply) - r(user, reply) = {diff}" if diff.low > 0
        else f"not reproduced: r(colon, reply) - r(user, reply) = {diff} includes 0")
    pres = [v for k, v in cos["pairs"].items() if k.startswith("present:") and "| present:" in k]
    oth = [v for k, v in cos["pairs"].items() if k.startswith("other:") and "| other:" in k]
    if pres and oth:
        p, o = pres[0]["matched"], oth[0]["matched"]
        out["present_probes_agree"] = (f"{'reproduced' if p.p < 0.05 and p.low > 0 else 'not reproduced'}: the two "
                                       f"present-speaker probes, cosine {p} (p = {p.p:.3g})")
        out["other_probes_agree"] = (f"{'reproduced' if o.p < 0.05 and o.low > 0 else 'not reproduced'}: the two "
                                     f"other-speaker probes, cosine {o} (p = {o.p:.3g})")
    for k, a in accuracy.items():
        acc = a["accuracy"]
        out[f"heldout_{k}"] = (f"{'above' if acc.low > a['shuffled_95'] else 'not above'} shuffled labels: "
                               f"{acc} vs shuffled 95th percentile {a['shuffled_95']:.3f} (chance {a['chance']:.3f})")
    real = deflection["heldout"].get("story_vector_real_feeling", {})
    if "deflect_minus_open" in real:
        gap = Estimate.from_dict(real["deflect_minus_open"])
        rd = Estimate.from_dict(real["deflect"])
        out["real_feeling_read_when_hidden"] = (
            f"the story vector of the hidden feeling reads {rd} at the character's tokens when it is hidden; "
            f"deflect - open = {gap}" + (" (lower when hidden)" if gap.high < 0 else
                                          " (no lower when hidden)" if gap.low > 0 or gap.high > 0 else ""))
    moved = [k for k, c in steering["conditions"].items()
             if any(v == "behaviour moves, expression does not" for v in c["choice"]["verdict"].values())]
    out["choice_moves_without_expression"] = (
        f"found in {len(moved)} of {len(steering['conditions'])} steering conditions: {moved}" if moved else
        f"not found in any of {len(steering['conditions'])} steering conditions (the choice measure)")
    return out


def error_bars(estimates: Sequence[Estimate]) -> np.ndarray:
    """``[2, n]`` distances from each estimate to its interval's ends, for matplotlib's ``xerr``/``yerr``; a
    percentile interval need not contain the point estimate of a nonlinear statistic, so a negative distance
    is drawn as 0 (the interval is reported in full in the printed numbers)."""
    v = np.array([[e.value - e.low, e.high - e.value] for e in estimates], float).T
    return np.clip(np.nan_to_num(v), 0, None)


def deflection_traces(model: Model, dialogues: Sequence[Dialogue], study: dict[str, Any], vectors: EmotionVectors,
                      layer: int, max_turns: int | None, n_pairs: int = 2) -> list[tuple[str, list[str], list[float]]]:
    """Per-token traces (rows for :func:`emolens.display.trace_figure`) of the first ``n_pairs`` matched pairs
    with different target feelings, each dialogue rendered as the study read it (plain, with the context line):
    the cosine of every token's residual at ``layer`` with the deflection vector of the target (from
    :func:`deflection_study`'s ``probes``) and with the story vector of the real feeling."""
    import torch

    from emolens.activations import token_residuals
    from emolens.readout import project
    from emolens.speakers import speaker_tokens

    bridge, spec = model
    by: dict[str, dict[str, Dialogue]] = {}
    for d in dialogues:
        by.setdefault(pair_key(d), {})[d.variant] = d
    chosen, seen = [], set()
    for pair in by.values():
        if {"deflect", "open"} <= set(pair) and pair["deflect"].emotions[0] not in seen:
            chosen.append(pair)
            seen.add(pair["deflect"].emotions[0])
        if len(chosen) == n_pairs:
            break
    rows = []
    for pair in chosen:
        target = pair["deflect"].emotions[0]
        dv = torch.as_tensor(np.asarray(study["probes"]["deflect"][study["targets"].index(target)]), dtype=torch.float32)
        dirs = [("deflection vector", dv)]
        if target in vectors.emotions:
            dirs.append(("story vector", vectors.vector(target, layer)))
        for variant in ("deflect", "open"):
            d = pair[variant]
            text = speaker_tokens(spec, d, "plain", max_turns).text
            ids, res = token_residuals(bridge, spec, text, [layer])
            toks = [spec.tokenizer.decode([i]) for i in ids]
            for name, v in dirs:
                vals = project(res[:, 0], v[None].float(), "cosine")[:, 0]
                how = "hidden" if variant == "deflect" else "shown"
                rows.append((f"{d.id}: {target} {how}; {name} of {target}", toks, vals.tolist()))
    return rows
