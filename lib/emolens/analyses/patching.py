"""Notebook 06: where the emotion of a minimal pair is carried, how much the emotion direction alone carries,
and what ablating emotion directions breaks beside its cost. Built on :mod:`emolens.patching`.

The unit of every interval is the pair (or the story / scenario for ablation): pairs are resampled whole.
Clean is the text with the emotion the pair is about (the good biopsy, the affirmed feeling); corrupted is the
other one; patches move clean activations into the corrupted run.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emolens.patching import (
    AlignedPair,
    Metric,
    PatchingError,
    align_pair,
    attribution_patch_resid,
    clean_metric_values,
    edit_span,
    get_act_patch_resid_post,
    get_act_patch_resid_post_by_layer,
    logit_diff_metric,
    random_subspace,
    run_with_cache,
)

CONTINUATION = "It sounds like you feel"  # our wording: the reply is made to name a feeling next
NEGATION_FOIL = " fine"  # the word an emotion word is compared with after a negation pair
METRICS = ("readout", "logit_diff")


# ---- data: character spans of the negation pairs ------------------------------------------------------------


def add_negation_spans(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each negation record with ``char_start``, ``affirmed_span`` and ``negated_span`` (the inserted "not " or
    "don't ", located by :func:`emolens.patching.edit_span` in the sentences), placed after ``negated``; every
    other field kept as it was."""
    out = []
    for o in records:
        s, a, n = edit_span(o["affirmed"], o["negated"])
        new: dict[str, Any] = {}
        for k, v in o.items():
            if k in ("char_start", "affirmed_span", "negated_span"):
                continue
            new[k] = v
            if k == "negated":
                new.update(char_start=s, affirmed_span=a, negated_span=n)
        out.append(new)
    return out


def rewrite_negation_spans(path: Path) -> int:
    """Rewrite ``negation_pairs.jsonl`` in place with its span fields (one ``json.dumps`` line per record)."""
    from emolens.data.records import read_jsonl

    recs = add_negation_spans([o for _, o in read_jsonl(path)])
    Path(path).write_text("".join(json.dumps(o) + "\n" for o in recs), encoding="utf-8")
    return len(recs)


def negation_records(path: Path | None = None) -> list[dict[str, Any]]:
    """The negation pairs with their recorded spans, each checked against the texts."""
    from emolens.data.records import read_jsonl
    from emolens.paths import data_dir

    path = Path(path or data_dir() / "eval" / "negation_pairs.jsonl")
    out = []
    for n, o in read_jsonl(path):
        if "char_start" not in o:
            raise PatchingError(f"{path}:{n} has no span fields: run emolens.analyses.patching.rewrite_negation_spans")
        s, a, b = o["char_start"], o["affirmed_span"], o["negated_span"]
        if (s, a, b) != edit_span(o["affirmed"], o["negated"]):
            raise PatchingError(f"{path}:{n}: recorded spans {(s, a, b)} do not match the texts")
        out.append(o)
    return out


# ---- pairs as patching cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairCase:
    """One minimal or negation pair, tokenized for a model: the aligned sequences (chat prompt + the reply's
    first words), the Assistant colon and the user message's end as positions from the end (the same token in
    both runs), and the emotions the metrics read."""

    id: str
    kind: str  # "word", "number" or "negation"
    pair: AlignedPair
    colon: int  # negative: from the end
    message_end: int  # negative: the user message's last token
    emotion: str  # the clean text's emotion
    other: str | None  # the corrupted text's emotion (None for negation pairs: the same emotion, negated)

    @property
    def n_tokens(self) -> int:
        return len(self.pair.corrupt_ids)


def _case(spec: Any, pid: str, kind: str, clean_msg: str, corrupt_msg: str, start: int, clean_len: int,
          corrupt_len: int, emotion: str, other: str | None, continuation: str) -> PairCase:
    texts, chars, colons, ends = [], [], [], []
    for msg, n in ((clean_msg, clean_len), (corrupt_msg, corrupt_len)):
        head = spec.format_user_prompt(msg)
        text = head + continuation
        off = head.index(msg)
        ids_c, colon = spec.assistant_colon_position([{"role": "user", "content": msg}])
        full = spec.encode(text)
        if full[:colon + 1] != ids_c[:colon + 1]:
            raise PatchingError(f"{pid}: the continuation changes the tokens before the Assistant colon")
        from emolens.patching import char_to_token_span

        end_tok = char_to_token_span(spec, text, off + len(msg) - 1, off + len(msg))[1]
        texts.append(text)
        chars.append((off + start, off + start + n))
        colons.append(colon - len(full))
        ends.append(end_tok - 1 - len(full))
    if colons[0] != colons[1] or ends[0] != ends[1]:
        raise PatchingError(f"{pid}: the two texts do not share the tokens after the edit")
    pair = align_pair(spec, pid, texts[0], texts[1], chars[0], chars[1])
    return PairCase(pid, kind, pair, colons[1], ends[1], emotion, other)


def pair_cases(spec: Any, minimal: Sequence[Any], negation: Sequence[dict[str, Any]],
               continuation: str = CONTINUATION) -> list[PairCase]:
    """Minimal pairs (clean = the ``clean`` text) and negation pairs (clean = affirmed, corrupted = negated, the
    context sentence first) as :class:`PairCase` for ``spec``'s tokenizer and chat template."""
    out = [_case(spec, p.id, p.kind, p.clean, p.corrupt, p.char_start, len(p.clean_span), len(p.corrupt_span),
                 p.emotion_clean, p.emotion_corrupt, continuation) for p in minimal]
    for o in negation:
        lead = o["context"] + " "
        out.append(_case(spec, o["id"], "negation", lead + o["affirmed"], lead + o["negated"],
                         len(lead) + o["char_start"], len(o["affirmed_span"]), len(o["negated_span"]),
                         o["emotion"], None, continuation))
    return out


def first_token(spec: Any, word: str) -> int:
    """The first token of `` word`` as it would follow "feel" in the reply."""
    return int(spec.tokenizer(" " + word, add_special_tokens=False).input_ids[0])


def case_metrics(spec: Any, case: PairCase, vectors: Any, layer: int) -> dict[str, Metric]:
    """The two metrics of a pair: the Assistant-colon readout at ``layer`` (cosine with the clean emotion's
    vector, minus that with the corrupted emotion's for minimal pairs) and the reply's log-probability of the
    clean emotion's word against the corrupted one's (against " fine" after a negation pair)."""
    import torch

    a = vectors.vector(case.emotion, layer, unit=True)
    b = vectors.vector(case.other, layer, unit=True) if case.other else torch.zeros_like(a)
    direction = a - b
    pos = case.colon

    def readout(logits: Any, resid: dict[int, Any]) -> Any:
        x = resid[layer][:, pos].float()
        return (x @ direction.to(x.device)) / x.norm(dim=-1).clamp(min=1e-12)

    good = first_token(spec, case.emotion)
    bad = first_token(spec, case.other) if case.other else first_token(spec, NEGATION_FOIL.strip())
    return {"readout": Metric(readout, (layer,), needs_logits=False), "logit_diff": logit_diff_metric(good, bad)}


# ---- positions shared across pairs --------------------------------------------------------------------------


def position_groups(case: PairCase) -> dict[str, list[int]]:
    """Corrupted positions grouped by role, so pairs of different lengths can be averaged: the edited tokens,
    the next two tokens, the rest of the message, its last token, each token of the chat template up to the
    Assistant colon, and the reply's words (each by its offset from the end)."""
    T = case.n_tokens
    s0, s1 = case.pair.corrupt_span
    end, colon = T + case.message_end, T + case.colon
    groups: dict[str, list[int]] = {"edit": list(range(s0, s1)), "+1": [s1] if s1 < end else [],
                                    "+2": [s1 + 1] if s1 + 1 < end else [], "rest": list(range(s1 + 2, end)),
                                    "msg end": [end] if end >= s1 else []}
    for p in range(end + 1, colon):
        groups[f"tmpl{p - colon}"] = [p]
    groups["colon"] = [colon]
    for p in range(colon + 1, T):
        groups[f"reply{p - T}"] = [p]
    return groups


def group_labels(case: PairCase) -> list[str]:
    """Readable labels of :func:`position_groups`, with the template and reply tokens decoded."""
    T, colon = case.n_tokens, case.n_tokens + case.colon
    out = []
    for g, ps in position_groups(case).items():
        if g.startswith(("tmpl", "reply")):
            out.append(repr(case.pair.tokens[ps[0]]).strip("'"))
        else:
            out.append(g)
    assert len(out) == len(position_groups(case)) and colon < T
    return out


def grouped(values: Any, positions: Sequence[int], groups: Mapping[str, Sequence[int]]) -> np.ndarray:
    """``values [..., P]`` over ``positions`` averaged within each group -> ``[..., G]`` (NaN for empty groups)."""
    v = np.asarray(values, float)
    index = {p: i for i, p in enumerate(positions)}
    out = np.full(v.shape[:-1] + (len(groups),), np.nan)
    for g, ps in enumerate(groups.values()):
        cols = [index[p] for p in ps if p in index]
        if cols:
            with warnings.catch_warnings():  # an all-NaN group (unmatched edit tokens) stays NaN, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                out[..., g] = np.nanmean(v[..., cols], axis=-1)
    return out


# ---- uncertainty over pairs ----------------------------------------------------------------------------------


def mean_ci(x: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, np.ndarray]:
    """Mean over the first axis (pairs) of ``x [n, ...]`` with a percentile bootstrap interval, pairs resampled
    whole; NaN entries (a pair without that cell) are left out of each mean."""
    x = np.asarray(x, float)
    if x.shape[0] == 0:
        raise ValueError("no pairs to average")
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():  # cells no pair has stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(x, 0)
        boots = np.stack([np.nanmean(x[rng.integers(0, len(x), len(x))], 0) for _ in range(n_boot)])
        a = (1 - level) / 2
        lo, hi = np.nanquantile(boots, [a, 1 - a], axis=0)
    return {"mean": mean, "low": lo, "high": hi, "n": np.sum(np.isfinite(x), 0)}


def ratio_ci(num: Any, den: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """``mean(num) / mean(den)`` over pairs (rows), with a bootstrap interval from resampling pairs: the share
    of an average effect that a part of it carries (more stable than averaging per-pair ratios)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    ok = np.isfinite(num) & np.isfinite(den)
    num, den = num[ok], den[ok]
    if not len(num):
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), (n_boot, len(num)))
    with np.errstate(all="ignore"):
        boots = num[idx].mean(1) / den[idx].mean(1)
        boots = boots[np.isfinite(boots)]
        a = (1 - level) / 2
        lo, hi = (np.quantile(boots, [a, 1 - a]) if len(boots) else (np.nan, np.nan))
        return {"value": float(num.mean() / den.mean()), "low": float(lo), "high": float(hi), "n": int(len(num))}


# ---- where is the emotion carried? ---------------------------------------------------------------------------


@dataclass
class CaseResult:
    """Everything measured on one pair: the clean and corrupted metric values, the exact patching grid
    ``[metric, layer, pos]`` over ``grid_layers`` and ``positions``, the attribution grid over every layer,
    the readout difference clean - corrupted per layer and aligned token, and per-layer directional patches."""

    case: PairCase
    clean: np.ndarray
    corrupt: np.ndarray
    grid_layers: list[int]
    positions: list[int]
    exact: np.ndarray  # [M, len(grid_layers), len(positions)]
    attribution: np.ndarray  # [M, n_layers, T]
    readout_difference: np.ndarray  # [n_layers, T] (NaN where a token has no partner)
    directional: dict[str, np.ndarray]  # condition -> [M, len(dir_layers)]
    dir_layers: list[int]


def readout_difference(model: Any, case: PairCase, vectors: Any, clean_cache: Mapping[str, Any],
                       corrupt_cache: Mapping[str, Any], layers: Sequence[int]) -> np.ndarray:
    """Cosine readout of the case's emotion direction, clean minus corrupted, per layer and aligned token
    (paper Figures 12-14 plot this difference): ``[len(layers), T]``, NaN where a token has no partner."""
    import torch

    T = case.n_tokens
    out = np.full((len(layers), T), np.nan)
    has = [p for p in range(T) if case.pair.partner[p] is not None]
    src = [int(case.pair.partner[p]) for p in has]  # type: ignore[arg-type]
    for j, layer in enumerate(layers):
        a = vectors.vector(case.emotion, layer, unit=True)
        b = vectors.vector(case.other, layer, unit=True) if case.other else torch.zeros_like(a)
        d = a - b
        name = f"blocks.{layer}.hook_resid_post"
        c, k = clean_cache[name][src], corrupt_cache[name][has]
        out[j, has] = ((c @ d) / c.norm(dim=-1) - (k @ d) / k.norm(dim=-1)).numpy()
    return out


def case_subspaces(case: PairCase, vectors: Any, layer: int, cluster_of: Mapping[str, str], seed: int) -> dict[str, Any]:
    """The subspaces a directional patch moves at ``layer``: the pair's emotion vectors (1 or 2 dimensions),
    the span of the vectors of every emotion in their clusters, and a random subspace of each one's dimension."""
    emos = [case.emotion] + ([case.other] if case.other else [])
    own = vectors.at(layer)[[vectors.emotion_index(e) for e in emos]]
    clusters = {cluster_of[e] for e in emos}
    members = [e for e in vectors.emotions if cluster_of.get(e) in clusters]
    clus = vectors.at(layer)[[vectors.emotion_index(e) for e in members]]
    d = own.shape[-1]
    return {"emotion": own, "random (emotion dim)": random_subspace(len(own), d, seed),
            "cluster": clus, "random (cluster dim)": random_subspace(len(members), d, seed + 1)}


def patch_case(model: Any, case: PairCase, vectors: Any, layer: int, grid_layers: Sequence[int],
               dir_layers: Sequence[int], cluster_of: Mapping[str, str], seed: int = 0,
               batch_size: int = 16) -> CaseResult:
    """Run every patching measurement of notebook 06 on one pair (see :class:`CaseResult`)."""
    bridge, spec = model
    ms = case_metrics(spec, case, vectors, layer)
    clean_ids, corrupt_ids = list(case.pair.clean_ids), list(case.pair.corrupt_ids)
    every = list(range(spec.n_layers))
    cc = run_with_cache(model, clean_ids)
    kc = run_with_cache(model, corrupt_ids)
    clean = clean_metric_values(model, clean_ids, ms)
    positions = list(range(case.pair.first_diff, case.n_tokens))
    grid = get_act_patch_resid_post(model, corrupt_ids, cc, ms, grid_layers, positions, partner=case.pair.partner,
                                    clean_metrics=clean, batch_size=batch_size)
    attr = attribution_patch_resid(model, corrupt_ids, cc, ms, every, partner=case.pair.partner)
    diff = readout_difference(model, case, vectors, cc, kc, every)
    directional: dict[str, np.ndarray] = {}
    full = get_act_patch_resid_post_by_layer(model, corrupt_ids, cc, ms, dir_layers, partner=case.pair.partner,
                                             batch_size=batch_size)
    directional["full"] = full.values.numpy()
    per: dict[str, list[Any]] = {}
    for j, lay in enumerate(dir_layers):
        for name, basis in case_subspaces(case, vectors, lay, cluster_of, seed + 1000 * j).items():
            g = get_act_patch_resid_post_by_layer(model, corrupt_ids, cc, ms, [lay], basis=basis,
                                                  partner=case.pair.partner, batch_size=batch_size)
            per.setdefault(name, []).append(g.values[:, 0].numpy())
    directional.update({k: np.stack(v, -1) for k, v in per.items()})
    return CaseResult(case, clean.numpy(), grid.corrupt.numpy(), list(grid_layers), positions, grid.values.numpy(),
                      attr.values.numpy(), diff, directional, list(dir_layers))


def patch_cases(model: Any, cases: Sequence[PairCase], vectors: Any, layer: int, grid_layers: Sequence[int],
                dir_layers: Sequence[int], cluster_of: Mapping[str, str], exact_ids: Sequence[str] | None = None,
                progress: bool = True) -> list[CaseResult]:
    """:func:`patch_case` for each case (exact grid and directional patches only for ``exact_ids``; the others
    get the attribution grid and the readout difference, the cheap measurements)."""
    from tqdm.auto import tqdm

    out = []
    for i, c in enumerate(tqdm(cases, desc="pairs", disable=not progress)):
        exact = exact_ids is None or c.id in exact_ids
        out.append(patch_case(model, c, vectors, layer, grid_layers if exact else [],
                              dir_layers if exact else [], cluster_of, seed=i) if exact else
                   _cheap_case(model, c, vectors, layer))
    return out


def _cheap_case(model: Any, case: PairCase, vectors: Any, layer: int) -> CaseResult:
    bridge, spec = model
    ms = case_metrics(spec, case, vectors, layer)
    every = list(range(spec.n_layers))
    cc = run_with_cache(model, list(case.pair.clean_ids))
    kc = run_with_cache(model, list(case.pair.corrupt_ids))
    clean = clean_metric_values(model, list(case.pair.clean_ids), ms)
    attr = attribution_patch_resid(model, list(case.pair.corrupt_ids), cc, ms, every, partner=case.pair.partner)
    diff = readout_difference(model, case, vectors, cc, kc, every)
    M = len(ms)
    return CaseResult(case, clean.numpy(), attr.corrupt.numpy(), [], [], np.zeros((M, 0, 0)), attr.values.numpy(),
                      diff, {}, [])


# ---- summaries across pairs ----------------------------------------------------------------------------------


def grouped_grid(r: CaseResult, which: str = "exact") -> np.ndarray:
    """A pair's patching effect (patched - corrupted) ``[M, layers, groups]`` in :func:`position_groups` order;
    ``which`` = "exact" (over its grid layers), "attribution" (all layers) or "difference" (``[layers, groups]``)."""
    groups = position_groups(r.case)
    if which == "exact":
        return grouped(r.exact - r.corrupt[:, None, None], r.positions, groups)
    if which == "attribution":
        return grouped(r.attribution - r.corrupt[:, None, None], list(range(r.case.n_tokens)), groups)
    if which == "difference":
        return grouped(r.readout_difference, list(range(r.case.n_tokens)), groups)
    raise ValueError(f"which={which!r}: 'exact', 'attribution' or 'difference'")


def common_groups(results: Sequence[CaseResult]) -> list[str]:
    """Group names present in every pair (template and reply tokens are shared by construction)."""
    names = [list(position_groups(r.case)) for r in results]
    return [g for g in names[0] if all(g in n for n in names[1:])]


def average_grids(results: Sequence[CaseResult], which: str = "exact", n_boot: int = 1000) -> dict[str, Any]:
    """Mean patching effect (or readout difference) per layer and position group over pairs, with bootstrap
    intervals over pairs; groups a pair lacks (no "+2" after a final edit) are left out of that cell's mean."""
    keep = common_groups(results) if results else []
    stack = []
    for r in results:
        names = list(position_groups(r.case))
        g = grouped_grid(r, which)
        stack.append(g[..., [names.index(k) for k in keep]])
    out = mean_ci(np.stack(stack), n_boot)
    out["groups"] = keep
    out["labels"] = [lab for g, lab in zip(position_groups(results[0].case), group_labels(results[0].case)) if g in keep]
    return out


def layer_ranges(n_layers: int) -> dict[str, list[int]]:
    """The paper's two bands of Figure 12: the first half of the blocks and the second half."""
    half = n_layers // 2
    return {"early -> early-mid": list(range(half)), "mid-late -> late": list(range(half, n_layers))}


def range_lines(results: Sequence[CaseResult], which: str, layers: Sequence[int], n_layers: int,
                metric: int | None = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Per position group, the effect averaged over each band of :func:`layer_ranges` and then over pairs."""
    keep = common_groups(results)
    out: dict[str, Any] = {"groups": keep}
    for band, ls in layer_ranges(n_layers).items():
        cols = [layers.index(x) for x in ls if x in layers]
        rows = []
        for r in results:
            names = list(position_groups(r.case))
            g = grouped_grid(r, which)
            g = g[metric] if metric is not None else g
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                rows.append(np.nanmean(g[cols][:, [names.index(k) for k in keep]], 0) if cols else
                            np.full(len(keep), np.nan))
        out[band] = mean_ci(np.stack(rows), n_boot)
    return out


def directional_shares(results: Sequence[CaseResult], metric: int, n_boot: int = 1000) -> dict[str, Any]:
    """Per directional condition and layer, the share of the full patch's mean effect it carries (ratio of
    means over pairs, bootstrap over pairs), and the mean effects themselves."""
    rs = [r for r in results if r.directional]
    if not rs:
        return {}
    layers = rs[0].dir_layers
    out: dict[str, Any] = {"layers": layers, "n_pairs": len(rs)}
    full = np.stack([r.directional["full"][metric] - r.corrupt[metric] for r in rs])  # [n, L]
    for cond in rs[0].directional:
        eff = np.stack([r.directional[cond][metric] - r.corrupt[metric] for r in rs])
        out[cond] = {"effect": mean_ci(eff, n_boot),
                     "share": [ratio_ci(eff[:, j], full[:, j], n_boot, seed=j) for j in range(len(layers))]}
    return out


def attribution_agreement(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Per pair and metric, the Pearson correlation of attribution and exact patching effects over the exact
    grid's cells, and where the approximation fails: the mean absolute error per grid layer, relative to the
    largest exact effect of the pair."""
    from emolens.stats import pearson

    rs = [r for r in results if r.exact.size]
    per_pair: dict[str, dict[str, float]] = {}
    err: list[np.ndarray] = []
    for r in rs:
        cols = [r.positions[i] for i in range(len(r.positions))]
        approx = r.attribution[:, r.grid_layers][:, :, cols] - r.corrupt[:, None, None]
        exact = r.exact - r.corrupt[:, None, None]
        per_pair[r.case.id] = {}
        rel = []
        for m, name in enumerate(METRICS[:exact.shape[0]]):
            e, a = exact[m].ravel(), approx[m].ravel()
            ok = np.isfinite(e) & np.isfinite(a)
            per_pair[r.case.id][name] = pearson(e[ok], a[ok]) if ok.sum() > 2 else float("nan")
            scale = np.nanmax(np.abs(exact[m])) or 1.0
            with np.errstate(all="ignore"):
                rel.append(np.nanmean(np.abs(exact[m] - approx[m]), -1) / scale)
        err.append(np.stack(rel))
    out: dict[str, Any] = {"per_pair": per_pair, "layers": rs[0].grid_layers if rs else []}
    for m, name in enumerate(METRICS):
        vals = np.array([v[name] for v in per_pair.values()], float)
        out[name] = {"median_r": float(np.nanmedian(vals)) if len(vals) else float("nan"),
                     "r": mean_ci(vals[np.isfinite(vals)][:, None], 1000) if np.isfinite(vals).sum() else {},
                     "relative_error_by_layer": mean_ci(np.stack(err)[:, m], 1000) if err else {}}
    return out


# ---- what breaks without the direction? ------------------------------------------------------------------------


def fold_emotion_vectors(acts: Any, fold: int, variance_fraction: float = 0.5, spec: Any = None) -> Any:
    """EmotionVectors at every layer of ``acts`` built without the stories of topic fold ``fold``, so those
    stories are held out from the directions ablated while they are read."""
    from emolens.analyses.validation import topic_folds
    from emolens.vectors import build_emotion_vectors

    folds = topic_folds(acts.topic_ids)
    train = np.where(folds != fold)[0]
    ev = build_emotion_vectors(acts.means[train], acts.counts[train], [acts.labels[i] for i in train], acts.emotions,
                               acts.layers, acts.neutral_cov, variance_fraction)
    if spec is not None:
        ev.provenance.update(model=spec.name, n_layers=spec.n_layers)
    return ev


def top_pcs(vectors: Any, layer: int, k: int) -> Any:
    """The top ``k`` principal directions ``[k, d]`` of the emotion vectors at ``layer``."""
    import torch

    x = vectors.at(layer).double()
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:k].float()


def valence_direction(vectors: Any, layer: int, valence: Mapping[str, float] | None = None) -> Any:
    """A unit valence direction ``[d]`` at ``layer``: the least-squares direction along which the emotion vectors
    of the human-rated emotions (Warriner valence unless ``valence`` is given) follow their rating, i.e. the
    covariance of the centred vectors with the centred ratings. Fitted on words' ratings, never on a result."""
    import torch

    if valence is None:
        from emolens.data.ratings import match_ratings

        valence = {e: r.valence for e, r in match_ratings(list(vectors.emotions)).items()}
    rated = [e for e in vectors.emotions if e in valence]
    if len(rated) < 3:
        raise ValueError(f"only {len(rated)} emotions have a valence rating; need at least 3 for a direction")
    x = vectors.at(layer)[[vectors.emotion_index(e) for e in rated]].double()
    y = torch.tensor([float(valence[e]) for e in rated], dtype=torch.float64)
    w = (x - x.mean(0)).T @ (y - y.mean())
    return (w / w.norm()).float()


def ablation_subspace(kind: str, vectors: Any, emotion: str, layer: int, cluster_of: Mapping[str, str],
                      n_pcs: int = 3) -> Any:
    """The directions ablated at ``layer`` for a story of ``emotion``: its own vector ("emotion"), its cluster's
    vectors ("cluster"), the top principal components of the emotion space ("pcs", the same for all), or the
    valence direction fitted on human ratings ("valence", the same for all)."""
    if kind == "valence":
        return valence_direction(vectors, layer)[None]
    if kind == "emotion":
        return vectors.vector(emotion, layer)[None]
    if kind == "cluster":
        members = [e for e in vectors.emotions if cluster_of.get(e) == cluster_of[emotion]]
        return vectors.at(layer)[[vectors.emotion_index(e) for e in members]]
    if kind == "pcs":
        return top_pcs(vectors, layer, n_pcs)
    raise ValueError(f"ablation kind {kind!r}: 'emotion', 'cluster', 'pcs' or 'valence'")


def preference_ablations(vectors: Any, layers: Sequence[int], n_pcs: int = 3, seed: int = 0) -> dict[str, Any]:
    """The ablations of notebook 06's preference test, each at every layer of ``layers`` with that layer's own
    directions: the valence direction fitted on human ratings, the top ``n_pcs`` principal components of the
    emotion space, and a random subspace of the same dimension beside each (a new draw per layer)."""
    from emolens.analyses.preferences import ChoiceAblation

    real = {"valence": {la: valence_direction(vectors, la)[None].numpy() for la in layers},
            f"top {n_pcs} PCs": {la: top_pcs(vectors, la, n_pcs).numpy() for la in layers}}
    out = {}
    for k, (name, bases) in enumerate(real.items()):
        out[name] = ChoiceAblation(bases, name)
        d = next(iter(bases.values())).shape[-1]
        out[f"random {name}"] = ChoiceAblation({la: random_subspace(b.shape[0], d, seed + 1009 * k + la).numpy()
                                                for la, b in bases.items()}, f"random {name}")
    return out


def word_margins(model: Any, prompts: Sequence[str], right: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
    """Per prompt, the log-probability of the right emotion word's first token minus the mean over the other
    candidates' (next token after the prompt): above 0 means the model leans to the right word."""
    import torch

    from emolens.analyses.preferences import last_position_logits

    _, spec = model
    toks = [first_token(spec, w) for w in candidates]
    lp = torch.log_softmax(last_position_logits(model, list(prompts)), -1)[:, toks].numpy()
    out = np.zeros(len(prompts))
    for i, w in enumerate(right):
        j = list(candidates).index(w)
        out[i] = lp[i, j] - np.delete(lp[i], j).mean()
    return out


@dataclass(frozen=True)
class AblationCondition:
    kind: str  # "none", "emotion", "cluster", "pcs", "valence"
    layers: tuple[int, ...]
    random: bool  # a random subspace of the same dimension instead of the real one


class _RowBases:
    """Bases of one ablation condition per emotion and layer, computed once each (an SVD or a QR per call)."""

    def __init__(self, cond: AblationCondition, vectors: Any, cluster_of: Mapping[str, str], seed: int,
                 n_pcs: int, spec: Any) -> None:
        self.cond, self.vectors, self.cluster_of, self.seed, self.n_pcs, self.spec = cond, vectors, cluster_of, seed, n_pcs, spec
        self.memo: dict[tuple[str, int], Any] = {}

    def one(self, emotion: str, layer: int) -> Any:
        key = (emotion, layer)
        if key not in self.memo:
            shared = ("*", layer)  # the kinds that ablate the same subspace for every emotion: fitted once
            if self.cond.kind in ("pcs", "valence") and shared in self.memo:
                sub = self.memo[shared]
            else:
                sub = ablation_subspace(self.cond.kind, self.vectors, emotion, layer, self.cluster_of, self.n_pcs)
                if self.cond.kind in ("pcs", "valence"):
                    self.memo[shared] = sub
            if self.cond.random:  # the same random subspace for every row of one emotion at one layer
                sub = random_subspace(sub.shape[0], sub.shape[-1],
                                      self.seed + 7919 * layer + 104729 * self.vectors.emotion_index(emotion))
            self.memo[key] = sub
        return self.memo[key]

    def context(self, bridge: Any, emotions: Sequence[str]) -> Any:
        """A context manager ablating, in row b of the next batch, the subspace of ``emotions[b]``."""
        from contextlib import nullcontext

        from emolens.patching import rowwise_ablation, stack_bases

        if self.cond.kind == "none":
            return nullcontext()
        return rowwise_ablation(bridge, self.spec, {layer: stack_bases([self.one(e, layer) for e in emotions], self.spec)
                                                    for layer in self.cond.layers})


def _colon_acts(model: Any, messages: Sequence[str], emotions: Sequence[str], layer: int, rows: _RowBases,
                batch_size: int = 8) -> Any:
    """Residuals ``[n, d]`` at the Assistant colon at ``layer``, message i read under the ablation of
    ``emotions[i]``'s subspace (several messages per forward)."""
    import torch

    from emolens.activations import forward_layers, length_batches

    bridge, spec = model
    seqs, pos = zip(*(spec.assistant_colon_position([{"role": "user", "content": m}]) for m in messages))
    out = torch.zeros((len(messages), spec.d_model))
    for batch in length_batches([len(s) for s in seqs], batch_size):
        def on_layer(_: int, resid: Any, offsets: list[int], batch: list[int] = batch) -> None:
            for r, i in enumerate(batch):
                out[i] = resid[r, offsets[r] + pos[i]].float().cpu()

        with rows.context(bridge, [emotions[i] for i in batch]):
            forward_layers(bridge, spec, [seqs[i] for i in batch], [layer], "resid_post", on_layer)
    return out


def ablation_effects(model: Any, vectors: Any, conditions: Sequence[AblationCondition], stories: Sequence[Any],
                     story_suffix: str, candidates: Sequence[str], scenarios: Sequence[Any], neutral_msgs: Sequence[str],
                     neutral_texts: Sequence[str], read_layer: int, cluster_of: Mapping[str, str],
                     cost_emotion: str, n_pcs: int = 3, seed: int = 0, batch_size: int = 8,
                     progress: bool = True) -> dict[str, Any]:
    """For each ablation condition: the word-prediction margins of held-out stories (:func:`word_margins`), the
    own-emotion Assistant-colon readout of implicit scenarios at ``read_layer`` relative to neutral messages read
    under the same ablation, and the cost on neutral text (:func:`emolens.interventions.intervention_cost`, with
    ``cost_emotion``'s subspace for the per-emotion kinds). Each story / scenario loses its own emotion's
    subspace; rows with different subspaces share a forward pass (:func:`emolens.patching.rowwise_ablation`)."""
    import torch
    from tqdm.auto import tqdm

    from emolens.analyses.preferences import last_position_logits
    from emolens.interventions import intervention_cost

    bridge, spec = model
    prompts = [s.text + story_suffix for s in stories]
    toks = [first_token(spec, w) for w in candidates]
    right = [list(candidates).index(s.emotion) for s in stories]
    scen_emos = sorted({s.emotion for s in scenarios})
    unit = {e: vectors.vector(e, read_layer, unit=True) for e in scen_emos}
    base_rows = [(m, e) for e in scen_emos for m in neutral_msgs]
    out: dict[str, Any] = {}
    for k, cond in enumerate(tqdm(conditions, desc="ablations", disable=not progress)):
        rows = _RowBases(cond, vectors, cluster_of, seed + 31 * k, n_pcs, spec)
        logits = last_position_logits(model, prompts, batch_size,
                                      intervention=lambda batch, lengths, rows=rows: rows.context(
                                          bridge, [stories[i].emotion for i in batch]))
        lp = torch.log_softmax(logits, -1)[:, toks].numpy()
        margins = np.array([lp[i, j] - np.delete(lp[i], j).mean() for i, j in enumerate(right)])
        acts = _colon_acts(model, [s.text for s in scenarios], [s.emotion for s in scenarios], read_layer, rows,
                           batch_size)
        base = _colon_acts(model, [m for m, _ in base_rows], [e for _, e in base_rows], read_layer, rows, batch_size)

        def cos(x: Any, e: str) -> float:
            return float((x @ unit[e]) / x.norm())

        zero = {e: np.mean([cos(base[i], e) for i, (_, be) in enumerate(base_rows) if be == e]) for e in scen_emos}
        readouts = np.array([cos(acts[i], s.emotion) - zero[s.emotion] for i, s in enumerate(scenarios)])
        cost = ({"kl_per_token": 0.0, "perplexity_ratio": 1.0} if cond.kind == "none" else
                intervention_cost(bridge, spec, list(neutral_texts), lambda rows=rows: rows.context(bridge, [cost_emotion])))
        out[condition_name(cond)] = {"kind": cond.kind, "layers": list(cond.layers), "random": cond.random,
                                     "margins": margins, "readouts": readouts, "cost": cost}
    return out


def condition_name(cond: AblationCondition) -> str:
    if cond.kind == "none":
        return "none"
    where = f"layer {cond.layers[0]}" if len(cond.layers) == 1 else f"layers {cond.layers[0]}-{cond.layers[-1]}"
    return f"{'random ' if cond.random else ''}{cond.kind} @ {where}"


def ablation_summary(effects: Mapping[str, Any], n_boot: int = 1000) -> dict[str, Any]:
    """Per condition, the mean change from no ablation (per story / scenario, paired) with bootstrap intervals,
    and the cost; each real condition beside its random control of the same dimension."""
    base = effects["none"]
    out: dict[str, Any] = {}
    for name, e in effects.items():
        row: dict[str, Any] = {"kind": e["kind"], "layers": e["layers"], "random": e["random"], "cost": e["cost"]}
        for key in ("margins", "readouts"):
            d = np.asarray(e[key]) - np.asarray(base[key])
            ci = mean_ci(d[:, None], n_boot)
            row[f"{key}_change"] = {"value": float(ci["mean"][0]), "low": float(ci["low"][0]),
                                    "high": float(ci["high"][0]), "n": int(len(d))}
            row[f"{key}_mean"] = float(np.mean(e[key]))
        out[name] = row
    return out


# ---- choosing pairs and stating what holds ------------------------------------------------------------------


def pick_cases(cases: Sequence[PairCase], n: int | None) -> list[str]:
    """``n`` case ids taken in turn from each kind (word, number, negation), so a small exact sample still
    covers every kind of edit; the order within a kind is the file's. ``None``: every case, in that order."""
    if n is None:
        n = len(cases)
    by_kind: dict[str, list[str]] = {}
    for c in cases:
        by_kind.setdefault(c.kind, []).append(c.id)
    out: list[str] = []
    while len(out) < n and any(by_kind.values()):
        for k in list(by_kind):
            if by_kind[k] and len(out) < n:
                out.append(by_kind[k].pop(0))
    return out


def _ci_str(d: Mapping[str, Any], i: Any = ()) -> str:
    return f"{float(np.asarray(d['mean'])[i]):+.4f} [{float(np.asarray(d['low'])[i]):+.4f}, " \
           f"{float(np.asarray(d['high'])[i]):+.4f}]"


MIN_PAIRS = 3  # fewer pairs than this and a claim is not judged at all: an interval over 1-2 pairs means little


def _verdict(holds: bool, n: int, evidence: str) -> dict[str, Any]:
    if n < MIN_PAIRS:
        return {"holds": None, "status": f"too few pairs (n={n})", "evidence": evidence}
    return {"holds": bool(holds), "status": "holds" if holds else "not shown", "evidence": evidence}


def verdicts(lines: Mapping[str, Any], shares: Mapping[str, Any], agreement: Mapping[str, Any],
             ablation: Mapping[str, Any], metric: str = "readout") -> dict[str, dict[str, Any]]:
    """One verdict per claim of the notebook, each with the numbers it rests on and a status ("holds", "not
    shown", or "too few pairs" below :data:`MIN_PAIRS`): ``lines`` from :func:`range_lines` of the readout
    difference, ``shares`` from :func:`directional_shares` (of ``metric``), ``agreement`` from
    :func:`attribution_agreement`, ``ablation`` from :func:`ablation_summary`. A claim holds when its 95%
    interval excludes zero (or its control's interval)."""
    out: dict[str, dict[str, Any]] = {}
    groups = list(lines["groups"])
    bands = [b for b in lines if b != "groups"]
    for g in ("edit", "colon"):
        if g in groups:
            j = groups.index(g)
            for b in bands:
                d = lines[b]
                out[f"readout difference at {g}, {b} layers, is above zero"] = _verdict(
                    bool(np.asarray(d["low"])[j] > 0), int(np.asarray(d["n"])[j]), _ci_str(d, j))
    if shares:
        for cond, rand in (("emotion", "random (emotion dim)"), ("cluster", "random (cluster dim)")):
            if cond not in shares or rand not in shares:
                continue
            wins = [lay for j, lay in enumerate(shares["layers"])
                    if shares[cond]["share"][j]["low"] > shares[rand]["share"][j]["high"]]
            ev = "; ".join(f"layer {lay}: {shares[cond]['share'][j]['value']:.2f} vs {shares[rand]['share'][j]['value']:.2f}"
                           for j, lay in enumerate(shares["layers"]))
            v = _verdict(bool(wins), int(shares["n_pairs"]), f"share of the full patch ({metric}): {ev}")
            v["layers"] = wins
            out[f"the {cond} subspace carries more of the patch effect than a {rand} subspace"] = v
    n_att = len(agreement.get("per_pair", {}))
    for m in METRICS:
        if m in agreement and np.isfinite(agreement[m]["median_r"]):
            r = agreement[m]["median_r"]
            out[f"attribution patching tracks exact patching ({m}, median r > 0.8)"] = _verdict(
                r > 0.8, n_att, f"median r over pairs {r:.2f}")
    for name, row in ablation.items():
        rand = ablation.get("random " + name)
        if row["random"] or row["kind"] == "none" or rand is None:
            continue
        for key, what in (("margins_change", "the right emotion word's margin"),
                          ("readouts_change", "the own-emotion colon readout")):
            real, ctrl = row[key], rand[key]
            out[f"ablating {name} lowers {what} beyond a random subspace of its dimension"] = _verdict(
                real["high"] < ctrl["low"], real["n"],
                f"{real['value']:+.3f} [{real['low']:+.3f}, {real['high']:+.3f}] vs random {ctrl['value']:+.3f} "
                f"[{ctrl['low']:+.3f}, {ctrl['high']:+.3f}]; cost KL {row['cost']['kl_per_token']:.3f} vs "
                f"{rand['cost']['kl_per_token']:.3f} nats/token")
    return out


def first_per_emotion(items: Sequence[Any], emotions: Sequence[str], k: int) -> list[Any]:
    """The first ``k`` items (stories, scenarios: anything with ``.emotion``) of each of ``emotions``."""
    out = []
    for e in emotions:
        out += [x for x in items if x.emotion == e][:k]
    return out


def heldout_stories(acts: Any, fold: int, emotions: Sequence[str], k: int) -> list[Any]:
    """``k`` stories per emotion from topic fold ``fold`` (the fold :func:`fold_emotion_vectors` leaves out)."""
    from emolens.analyses.validation import topic_folds

    folds = topic_folds(acts.topic_ids)
    return first_per_emotion([s for s, f in zip(acts.stories, folds) if f == fold], emotions, k)


def preference_ablation_verdicts(res: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per real ablation of :func:`emolens.analyses.preferences.ablation_preferences`: does it move the ratings
    more than its random control of the same dimension (mean |change| CIs apart), and how it changes the
    separation of good from bad activities (d') beside the control's change."""
    base = res["none"]["good_vs_bad"]["d_prime"]
    out = {}
    for name, row in res.items():
        if name == "none" or name.startswith("random "):
            continue
        ctrl = res.get(f"random {name}")
        if ctrl is None:
            raise ValueError(f"no random control for the ablation {name!r}")
        m, c = row["mean_abs_change"], ctrl["mean_abs_change"]
        beyond = m["low"] > c["high"]
        evidence = (f"mean |rating change| {m['value']:.0f} [{m['low']:.0f}, {m['high']:.0f}] Elo vs random "
                    f"{c['value']:.0f} [{c['low']:.0f}, {c['high']:.0f}]; good vs bad d' {base:.2f} -> "
                    f"{row['good_vs_bad']['d_prime']:.2f} (random {ctrl['good_vs_bad']['d_prime']:.2f}); rank "
                    f"agreement with the unablated design {row['spearman_vs_unablated']:.2f} (random "
                    f"{ctrl['spearman_vs_unablated']:.2f})")
        out[name] = {"holds": bool(beyond), "status": "holds" if beyond else "not shown", "evidence": evidence,
                     "d_prime_drop": base - row["good_vs_bad"]["d_prime"],
                     "random_d_prime_drop": base - ctrl["good_vs_bad"]["d_prime"]}
    return out
