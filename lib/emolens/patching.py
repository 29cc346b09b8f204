"""Activation patching, attribution patching and directional/mean ablation, on TransformerLens hooks.

The shape follows ``transformer_lens.patching``: one generic function runs a corrupted input many times, each
time with one activation replaced by its value from a clean run (a *patch*), and evaluates metrics on the
patched run; thin named variants fix the site and the index and return a ``[metric, layer, pos]`` or
``[metric, layer]`` grid. Differences from TransformerLens, and why:

- many patched runs share one batched forward (row r of the batch carries patch r), because on a CPU the
  per-call overhead of a 135M model dominates a one-row forward;
- positions where the clean and corrupted activations are identical (the shared prefix of a minimal pair:
  with a causal mask nothing before the first differing token can differ) are not run: patching them is
  exactly the unpatched run, which is what the grid records there;
- a metric is a function of the run, not only of the logits: :class:`Metric` may read the residual stream at
  some layers (the emotion readout at the Assistant colon) and says whether it needs the logits at all;
- clean and corrupted sequences may differ in length: ``partner[p]`` names the clean position whose value is
  patched into corrupted position ``p`` (``None``: no counterpart, left unpatched and reported as NaN);
- a patch may be *directional*: only the component along an orthonormal basis ``[k, d]`` is moved from the
  clean run (a full basis is the ordinary patch).

Every hook is attached through the bridge's own hook context, so it is removed on exit and on error.
Positions are 0-indexed into the corrupted sequence; metric positions may be negative (from the end), which
names the same token in both runs of a pair that shares its ending (the Assistant colon, the last token).

Example::

    clean = run_with_cache(model, clean_ids)
    m = {"readout": readout_metric(direction, layer=19, position=colon - len(ids)),
         "logit_diff": logit_diff_metric(good_id, bad_id)}
    grid = get_act_patch_resid_post(model, corrupt_ids, clean, m)      # PatchGrid, values [2, n_layers, T]
    approx = attribution_patch_resid(model, corrupt_ids, clean, m)     # same shape, one forward + backward
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emolens.activations import special_ids
from emolens.interventions import orthonormal_basis, steering_layers, unit_direction
from emolens.models.spec import ModelError, ModelSpec

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)
# Largest relative difference allowed between a replayed and a full unpatched run's residuals (see _Replay.check).
# Rounding alone gives about 1e-6 in float32 and 1.4-1.7e-2 in bf16 (SmolLM2, 12 minimal pairs, 2026-12-02).
REPLAY_TOLERANCE = {"float32": 1e-4, "half": 5e-2}
PATCH_SITES = ("resid_post", "resid_pre", "attn_out", "mlp_out")


class PatchingError(ValueError):
    """A patching input that cannot give a meaningful result; the message says what to change."""


# ---- metrics ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A scalar per run: ``fn(logits [b, T, vocab] or None, resid {layer: [b, T, d]}) -> [b]``.

    ``read_layers`` are the layers whose ``resid_post`` the metric reads; ``needs_logits=False`` lets the
    forward stop after the deepest read layer (patches below it are all that can matter then).
    ``logit_positions`` (positions of the run, negative from the end) declares the only positions whose logits
    ``fn`` reads: it then gets ``[b, len(logit_positions), vocab]``, those positions in that order, on every
    path, and replayed runs unembed nothing else (the unembedding is a fifth of a small model's work).
    """

    fn: Callable[[Any, dict[int, Any]], Any]
    read_layers: tuple[int, ...] = ()
    needs_logits: bool = True
    logit_positions: tuple[int, ...] | None = None


def readout_metric(direction: Any, layer: int, position: int, measure: str = "cosine") -> Metric:
    """Projection of the residual at ``layer`` (block output) and ``position`` on ``direction``: the cosine,
    or with ``measure="dot"`` the dot product with the unit direction (residual units)."""
    import torch

    if measure not in ("cosine", "dot"):
        raise PatchingError(f"measure {measure!r} not allowed: 'cosine' or 'dot'")
    d = torch.as_tensor(direction, dtype=torch.float32)
    if d.dim() != 1 or not torch.isfinite(d).all() or float(d.norm()) < 1e-12:
        raise PatchingError(f"readout direction must be a finite, non-zero [d] vector, got shape {tuple(d.shape)}")
    u = d / d.norm()

    def fn(logits: Any, resid: dict[int, Any]) -> Any:
        x = resid[layer][:, position].float()
        if x.shape[-1] != u.shape[0]:
            raise PatchingError(f"readout direction has width {u.shape[0]}, the residual {x.shape[-1]}")
        v = x @ u.to(x.device)
        return v / x.norm(dim=-1).clamp(min=1e-12) if measure == "cosine" else v

    return Metric(fn, (layer,), needs_logits=False)


def logit_diff_metric(good: int | Sequence[int], bad: int | Sequence[int], position: int = -1) -> Metric:
    """Log-probability of token(s) ``good`` minus that of ``bad`` at ``position`` (each side a log-sum-exp over
    its tokens, so several first tokens of a word can count together)."""
    import torch

    g = [good] if isinstance(good, int) else list(good)
    b = [bad] if isinstance(bad, int) else list(bad)
    if not g or not b:
        raise PatchingError("logit_diff_metric needs at least one good and one bad token")

    def fn(logits: Any, resid: dict[int, Any]) -> Any:
        lp = torch.log_softmax(logits[:, 0].float(), -1)  # the one declared position
        return torch.logsumexp(lp[:, g], -1) - torch.logsumexp(lp[:, b], -1)

    return Metric(fn, (), needs_logits=True, logit_positions=(position,))


def _metrics(metrics: Metric | Mapping[str, Metric]) -> dict[str, Metric]:
    if isinstance(metrics, Metric):
        return {"metric": metrics}
    out = dict(metrics)
    if not out or not all(isinstance(m, Metric) for m in out.values()):
        raise PatchingError("metrics must be a Metric or a non-empty mapping of names to Metric")
    return out


# ---- runs ---------------------------------------------------------------------------------------------------


def site_hook(layer: int, site: str) -> str:
    """The TransformerLens hook name of ``site`` at block ``layer``."""
    if site not in PATCH_SITES:
        raise PatchingError(f"site {site!r} not allowed: choose one of {PATCH_SITES}")
    return f"blocks.{layer}.hook_{site}"


def _ids(spec: ModelSpec, ids: Sequence[int] | Any, what: str) -> Any:
    import torch

    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() != 1 or t.numel() == 0:
        raise PatchingError(f"{what} must be a non-empty 1-d sequence of token ids, got shape {tuple(t.shape)}")
    return t


def _layers(spec: ModelSpec, layers: Sequence[int] | int | None) -> list[int]:
    return list(range(spec.n_layers)) if layers is None else steering_layers(spec, layers)


def run_metrics(bridge: TransformerBridge, spec: ModelSpec, ids: Any, metrics: Mapping[str, Metric],
                fwd_hooks: Sequence[tuple[str, Any]] = (), grad: bool = False,
                capture: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """One forward of ``ids [b, T]`` with ``fwd_hooks`` (patches) attached first; returns ``(values [b, M],
    captured {hook name: activation})``. The run stops after the deepest layer a metric reads when no metric
    needs the logits. ``grad`` keeps the graph (for attribution patching)."""
    import torch

    from emolens.fastpath import maybe_hf_internals

    for m in metrics.values():
        for layer in m.read_layers:
            spec.check_layer(layer)
    reads = sorted({layer for m in metrics.values() for layer in m.read_layers})
    need_logits = any(m.needs_logits for m in metrics.values())
    resid: dict[int, Any] = {}
    captured: dict[str, Any] = {}

    def reader(layer: int) -> Any:
        def fn(x: Any, hook: Any) -> Any:
            resid[layer] = x
            return x
        return fn

    def catcher(name: str) -> Any:
        def fn(x: Any, hook: Any) -> Any:
            if grad and not x.requires_grad:
                # frozen weights: make the first captured activation a leaf, so later ones are in its graph
                x = x.detach().requires_grad_(True)
            captured[name] = x
            return x
        return fn

    # patch hooks first (a metric must see the patched value), then captures (which may swap in a leaf that
    # requires grad), then the metric's reads, so all of them see the tensor that flows on
    hooks = list(fwd_hooks) + [(name, catcher(name)) for name in capture]
    hooks += [(f"blocks.{layer}.hook_resid_post", reader(layer)) for layer in reads]
    deepest = max(reads + [int(n.split(".")[1]) for n in capture], default=spec.n_layers - 1)
    stop = None if need_logits or deepest + 1 >= spec.n_layers else deepest + 1
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx, bridge.hooks(fwd_hooks=hooks), maybe_hf_internals(bridge):
        logits = bridge(ids.to(spec.device), return_type="logits" if need_logits else None, stop_at_layer=stop)
        cols = [torch.as_tensor(m.fn(_declared(logits, m), resid)).reshape(-1) for m in metrics.values()]
        vals = torch.stack(cols, -1) if cols else torch.zeros((ids.shape[0], 0))
    return vals, captured


def _declared(logits: Any, m: Metric) -> Any:
    """The logits a metric gets: all of them, or only its declared positions (in order)."""
    if logits is None or m.logit_positions is None:
        return logits
    T = logits.shape[1]
    return logits[:, [_position(p, T) for p in m.logit_positions]]


def run_with_cache(model: Any, ids: Sequence[int] | Any, sites: Sequence[str] = ("resid_post",),
                   layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Activations ``{hook name: [T, d]}`` of one unpatched run of ``ids`` (float32, on the CPU): the clean
    cache that patching reads its values from (a dict of the same names works as a hand-made cache)."""
    bridge, spec = model
    t = _ids(spec, ids, "ids")
    names = [site_hook(layer, s) for s in sites for layer in _layers(spec, layers)]
    _, cap = run_metrics(bridge, spec, t[None], {}, capture=names) if names else (None, {})
    return {k: v[0].detach().float().cpu() for k, v in cap.items()}


# ---- token alignment of minimal pairs -------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignedPair:
    """A clean and a corrupted token sequence and, for each corrupted position, its clean counterpart.

    The shared prefix and the shared suffix map position to position (the suffix counted from the end); the
    differing middle maps one to one when both sides have the same number of tokens there, and not at all
    otherwise (``partner`` is ``None``). ``span_*`` are token ranges ``[start, end)`` of the edited text.
    """

    id: str
    clean_ids: tuple[int, ...]
    corrupt_ids: tuple[int, ...]
    partner: tuple[int | None, ...]
    clean_span: tuple[int, int]
    corrupt_span: tuple[int, int]
    tokens: tuple[str, ...] = field(default=(), compare=False)  # corrupted tokens, decoded

    @property
    def same_length(self) -> bool:
        return len(self.clean_ids) == len(self.corrupt_ids)

    @property
    def first_diff(self) -> int:
        """The first corrupted position whose inputs differ from the clean run's (nothing before it can)."""
        return self.corrupt_span[0]


def edit_span(a: str, b: str) -> tuple[int, str, str]:
    """The single edit turning ``a`` into ``b``: ``(char_start, a_span, b_span)`` with ``a[:s] == b[:s]`` and
    ``a[s + len(a_span):] == b[s + len(b_span):]``, the spans as short as possible (an insertion has an empty
    ``a_span``); snapped back to a word start so a span is whole words (``not `` rather than ``ot n``)."""
    if a == b:
        raise PatchingError("the two texts are identical: there is no edit to locate")
    s = 0
    while s < min(len(a), len(b)) and a[s] == b[s]:
        s += 1
    # the edit began mid-word ("I'm n|ervous" vs "I'm n|ot nervous"): start at the word, before the suffix
    # is measured, so an insertion is found as one ("not ") rather than as a changed word
    while s > 0 and a[s - 1].isalnum() and b[s - 1].isalnum():
        s -= 1
    e = 0
    while e < min(len(a), len(b)) - s and a[-1 - e] == b[-1 - e]:
        e += 1
    ea, eb = len(a) - e, len(b) - e
    # the edit ended mid-word ("goo|d" vs "ba|d"): end with the word; an inserted "not " ends at a space already
    while ea < len(a) and a[ea].isalnum() and ((ea > s and a[ea - 1].isalnum()) or (eb > s and b[eb - 1].isalnum())):
        ea, eb = ea + 1, eb + 1
    return s, a[s:ea], b[s:eb]


def char_to_token_span(spec: ModelSpec, text: str, start: int, end: int) -> tuple[int, int]:
    """Token range ``[t0, t1)`` of ``spec.encode(text)`` covering characters ``[start, end)`` without the span's
    own leading and trailing spaces (:func:`emolens.interventions.token_span` on the trimmed span); an empty
    character range gives the empty token range at the token that holds ``start``."""
    from emolens.interventions import token_span

    if not 0 <= start <= end <= len(text):
        raise PatchingError(f"character span [{start}, {end}) is outside a text of length {len(text)}")
    # a span's own spaces are not the edit: "don't " must not claim the " feel" token after it
    while end > start and text[end - 1].isspace():
        end -= 1
    while start < end and text[start].isspace():
        start += 1
    if start == end:  # token_span would put an empty span after a token that straddles `start`; we want that token
        enc = spec.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        shift = len(spec.encode(text)) - len(enc.input_ids)
        t = next((i for i, (_, b) in enumerate(enc.offset_mapping) if b > start), len(enc.input_ids))
        return t + shift, t + shift
    try:
        return token_span(spec, text, start, end)
    except ValueError as e:
        raise PatchingError(str(e)) from e


def align_tokens(clean_ids: Sequence[int], corrupt_ids: Sequence[int], clean_span: tuple[int, int],
                 corrupt_span: tuple[int, int]) -> tuple[tuple[int | None, ...], tuple[int, int], tuple[int, int]]:
    """``(partner, clean_span, corrupt_span)``: the token spans widened to every position where the ids differ
    (a tokenizer may merge an edit with its neighbours), and each corrupted position's clean counterpart."""
    c, k = list(clean_ids), list(corrupt_ids)
    pre = 0
    while pre < min(len(c), len(k)) and c[pre] == k[pre]:
        pre += 1
    suf = 0
    while suf < min(len(c), len(k)) - pre and c[-1 - suf] == k[-1 - suf]:
        suf += 1

    def widen(span: tuple[int, int], hi: int) -> tuple[int, int]:
        # an empty span (the side of an insertion) has no token of its own: where the ids differ decides
        return (pre, hi) if span[0] == span[1] else (min(span[0], pre), max(span[1], hi))

    cs, ks = widen(clean_span, len(c) - suf), widen(corrupt_span, len(k) - suf)
    # the spans' outsides must be shared text: same prefix length, same suffix length
    if cs[0] != ks[0] or len(c) - cs[1] != len(k) - ks[1]:
        raise PatchingError("the character spans of the pair do not sit at the same place in both texts")
    partner: list[int | None] = []
    for p in range(len(k)):
        if p < ks[0]:
            partner.append(p)
        elif p >= ks[1]:
            partner.append(p - len(k) + len(c))
        elif cs[1] - cs[0] == ks[1] - ks[0]:
            partner.append(cs[0] + p - ks[0])
        else:
            partner.append(None)
    return tuple(partner), cs, ks


def align_pair(spec: ModelSpec, pair_id: str, clean_text: str, corrupt_text: str, clean_chars: tuple[int, int],
               corrupt_chars: tuple[int, int]) -> AlignedPair:
    """Tokenize both texts with ``spec`` and align them around their edited character spans."""
    ci, ki = spec.encode(clean_text), spec.encode(corrupt_text)
    partner, cs, ks = align_tokens(ci, ki, char_to_token_span(spec, clean_text, *clean_chars),
                                   char_to_token_span(spec, corrupt_text, *corrupt_chars))
    toks = tuple(spec.tokenizer.decode([i]) for i in ki)
    return AlignedPair(pair_id, tuple(ci), tuple(ki), partner, cs, ks, toks)


def alignment_report(pairs: Sequence[AlignedPair]) -> dict[str, Any]:
    """Which pairs have the same number of tokens (every position patchable) and which do not, by id: pairs
    whose counts differ are kept, with their edited tokens unmatched, and named here rather than dropped."""
    differ = [p for p in pairs if p.same_length is False]
    return {"n_pairs": len(pairs), "same_length": [p.id for p in pairs if p.same_length],
            "length_differs": {p.id: {"clean_tokens": len(p.clean_ids), "corrupt_tokens": len(p.corrupt_ids)}
                               for p in differ}}


# ---- the generic patch --------------------------------------------------------------------------------------


@dataclass
class PatchGrid:
    """Metric values of patched runs ``values [metric, *axes]`` (NaN where no patch was possible), the
    unpatched corrupted run's values ``corrupt [metric]`` and the clean run's ``clean [metric]`` when known."""

    values: Any
    axis_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    corrupt: Any
    clean: Any = None
    layers: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()

    def metric(self, name: str) -> Any:
        return self.values[self.metric_names.index(name)]

    def recovered(self, name: str) -> Any:
        """``(patched - corrupt) / (clean - corrupt)``: the share of the clean-vs-corrupted difference a patch
        restores (1 = all of it); NaN when the clean value is unknown or equals the corrupted one."""
        import torch

        i = self.metric_names.index(name)
        if self.clean is None:
            raise PatchingError("no clean value recorded: pass clean metrics to normalise")
        gap = float(self.clean[i] - self.corrupt[i])
        if abs(gap) < 1e-12:
            return torch.full_like(self.values[i], float("nan"))
        return (self.values[i] - self.corrupt[i]) / gap


Setter = Callable[[Any, Any], Any]  # (corrupted activation [n, d], clean activation [n, d]) -> patched [n, d]


def full_setter(corrupt: Any, clean: Any) -> Any:
    """The ordinary patch: the clean value replaces the corrupted one."""
    return clean


def directional_setter(basis: Any) -> Setter:
    """Move only the component along the orthonormal rows of ``basis [k, d]`` from the clean run."""
    def set_(corrupt: Any, clean: Any) -> Any:
        q = basis.to(corrupt.device, corrupt.dtype)
        return corrupt + ((clean - corrupt) @ q.T) @ q
    return set_


@dataclass(frozen=True)
class Patch:
    """One patched run: at ``site`` of ``layer``, corrupted positions ``positions`` take their clean values."""

    layer: int
    positions: tuple[int, ...]


def _check_cache(clean_cache: Mapping[str, Any], name: str, n_clean: int | None, d: int) -> Any:
    if name not in clean_cache:
        raise PatchingError(f"the clean cache has no {name!r}: build it with run_with_cache for that site and layer")
    x = clean_cache[name]
    if x.dim() != 2 or x.shape[-1] != d:
        raise PatchingError(f"clean activation {name!r} has shape {tuple(x.shape)}, expected [T, {d}]")
    return x


def _partner(partner: Sequence[int | None] | None, T: int, n_clean: int) -> list[int | None]:
    if partner is None:
        if T != n_clean:
            raise PatchingError(f"clean run has {n_clean} positions and the corrupted {T}: token counts differ, so "
                                "give partner= (see align_pair) to say which positions correspond")
        return list(range(T))
    p = list(partner)
    if len(p) != T:
        raise PatchingError(f"partner has {len(p)} entries for a corrupted run of {T} tokens")
    if any(q is not None and not 0 <= q < n_clean for q in p):
        raise PatchingError(f"partner names clean positions outside 0..{n_clean - 1}")
    return p


def generic_activation_patch(model: Any, corrupted_ids: Sequence[int] | Any, clean_cache: Mapping[str, Any],
                             metrics: Metric | Mapping[str, Metric], patches: Sequence[Patch], site: str = "resid_post",
                             setter: Setter = full_setter, partner: Sequence[int | None] | None = None,
                             batch_size: int = 16, progress: bool = False, replay: bool = True) -> tuple[Any, Any]:
    """Run the corrupted input once per patch (``batch_size`` patched runs per forward) and evaluate the metrics.

    Returns ``(values [metric, n_patches], corrupt [metric])``. A patch whose positions have no clean partner
    gives NaN; a patch that changes nothing (clean equals corrupted there, as on a shared prefix) is not run
    and gets the unpatched values, which is what running it would give.

    With ``replay`` (and nothing in :func:`replay_blockers`), a batch of ``resid_post`` patches runs only what
    they can change: from the block after its lowest patched layer, on the positions from the earliest patched
    one, with the rest taken from the corrupted run (its residuals and its prefix's key/value cache). Equal to
    running every patch in full up to floating-point rounding; the unpatched input replayed through that path
    must first match its full run's residuals (``REPLAY_TOLERANCE``), or every patch runs in full (with a
    warning saying why).
    """
    import einops
    import torch
    from tqdm.auto import tqdm

    bridge, spec = model
    ms = _metrics(metrics)
    ids = _ids(spec, corrupted_ids, "corrupted_ids")
    T = len(ids)
    layers = sorted({spec.check_layer(p.layer) for p in patches})
    names = {layer: site_hook(layer, site) for layer in layers}
    n_clean = None
    for name in names.values():
        n_clean = _check_cache(clean_cache, name, None, spec.d_model).shape[0]
    part = _partner(partner, T, n_clean if n_clean is not None else T)
    fast = replay and not replay_blockers(model, site)
    extra = _replay_layers(spec, ms) if fast else []
    base, corrupt_cache = run_metrics(bridge, spec, ids[None], ms,
                                      capture=sorted(set(names.values()) | {site_hook(la, site) for la in extra}))
    base = base[0].float().cpu()
    corrupt_cache = {k: v[0].float().cpu() for k, v in corrupt_cache.items()}
    out = torch.full((len(ms), len(patches)), float("nan"))
    todo: list[tuple[int, int, list[int], list[int]]] = []  # (patch index, layer, corrupted positions, clean ones)
    for i, p in enumerate(patches):
        layer = spec.check_layer(p.layer)
        pos = [_position(q, T) for q in p.positions]
        if any(part[q] is None for q in pos):
            continue
        src = [int(part[q]) for q in pos]  # type: ignore[arg-type]
        name = names[layer]
        new = setter(corrupt_cache[name][pos], clean_cache[name][src].float())
        if torch.equal(new, corrupt_cache[name][pos]):
            out[:, i] = base
            continue
        todo.append((i, layer, pos, src))
    bar = tqdm(total=len(todo), desc="patching", disable=not progress, leave=False)
    if fast and todo:
        todo.sort(key=lambda c: (c[1], c[2]))  # batches of one layer start as high as they can
        run = _Replay(model, ids, ms, corrupt_cache, clean_cache, setter, min(min(c[2]) for c in todo))
        fast = run.check(todo[len(todo) // 2][1])
    for start in range(0, len(todo), batch_size):
        rows = [(c[1], c[2], c[3]) for c in todo[start:start + batch_size]]
        if fast:
            vals = run.batch(rows)
        else:
            batch = einops.repeat(ids, "t -> b t", b=len(rows))
            vals = run_metrics(bridge, spec, batch, ms, fwd_hooks=_patch_hooks(rows, clean_cache, site, setter))[0]
        for r, c in enumerate(todo[start:start + batch_size]):
            out[:, c[0]] = vals[r].float().cpu()
        bar.update(len(rows))
    bar.close()
    return out, base


def _patch_hooks(rows: Sequence[tuple[int, list[int], list[int]]], clean_cache: Mapping[str, Any], site: str,
                 setter: Setter, shift: int = 0, above: int = -1) -> list[tuple[str, Any]]:
    """Hooks writing each batch row's patch, given as (layer, corrupted positions, clean positions): one hook per
    layer above ``above``, its positions moved by ``-shift`` (a replay runs only the suffix from ``shift``)."""
    hooks = []
    for layer in sorted({r[0] for r in rows if r[0] > above}):
        sel = [(i, [p - shift for p in pos], src) for i, (la, pos, src) in enumerate(rows) if la == layer]
        name = site_hook(layer, site)
        hooks.append((name, _patch_hook(sel, clean_cache[name], setter)))
    return hooks


def _bad_position(q: int, T: int) -> int:
    raise PatchingError(f"position {q} is out of range for a corrupted run of {T} tokens")


def _position(q: int, T: int) -> int:
    """Position ``q`` of a run of ``T`` tokens (negative from the end) as an index ``0..T-1``; refuses others."""
    return q % T if -T <= q < T else _bad_position(q, T)


def _patch_hook(rows: list[tuple[int, list[int], list[int]]], clean: Any, setter: Setter) -> Any:
    """A hook that, for each (batch row, corrupted positions, clean positions), writes the patched values."""
    import torch

    r_idx = torch.tensor([r for r, pos, _ in rows for _ in pos], dtype=torch.long)
    p_idx = torch.tensor([q for _, pos, _ in rows for q in pos], dtype=torch.long)
    s_idx = torch.tensor([s for _, _, src in rows for s in src], dtype=torch.long)

    def hook(act: Any, hook: Any) -> Any:
        act = act.clone()  # never write into a tensor the bridge may still hold elsewhere
        src = clean[s_idx].to(act.device, act.dtype)
        act[r_idx.to(act.device), p_idx.to(act.device)] = setter(act[r_idx, p_idx], src).to(act.dtype)
        return act
    return hook


def replay_blockers(model: Any, site: str = "resid_post") -> list[str]:
    """Why :func:`generic_activation_patch` would run every patch in full instead of replaying only what it
    can change (empty when it will replay)."""
    from emolens.replay import block_skip_blockers

    reasons = [] if site == "resid_post" else [f"site {site!r}: only resid_post patches are replayed"]
    return reasons + block_skip_blockers(model[0])


def _replay_layers(spec: ModelSpec, ms: Mapping[str, Metric]) -> list[int]:
    """Layers whose corrupted ``resid_post`` a replay reads besides the patched ones: the metrics' and, when a
    metric reads logits, the last."""
    reads = {layer for m in ms.values() for layer in m.read_layers}
    if any(m.needs_logits for m in ms.values()):
        reads.add(spec.n_layers - 1)
    return sorted(reads)


class _Replay:
    """Patched runs of one corrupted input that compute only what their patches can change: blocks above the
    lowest patched layer of a batch, positions from the earliest patched one (``first``) on. Everything else
    is the corrupted run's: its residuals (``corrupt``, float32 ``[T, d]`` per hook name) and the key/value
    cache of its first ``first`` tokens."""

    def __init__(self, model: Any, ids: Any, ms: Mapping[str, Metric], corrupt: Mapping[str, Any],
                 clean: Mapping[str, Any], setter: Setter, first: int) -> None:
        from emolens.replay import prefix_cache

        self.bridge, self.spec = model
        self.ms, self.corrupt, self.clean, self.setter = ms, corrupt, clean, setter
        self.T, self.n = len(ids), first
        self.dtype = next(self.bridge.parameters()).dtype
        self.cache = prefix_cache(self.bridge, self.spec, ids[:first].tolist()) if first > 0 else None
        self.reads = sorted({layer for m in ms.values() for layer in m.read_layers})
        self.logits = any(m.needs_logits for m in ms.values())
        self.deepest = self.spec.n_layers - 1 if self.logits else max(self.reads, default=self.spec.n_layers - 1)

    def _act(self, layer: int) -> Any:
        return self.corrupt[site_hook(layer, "resid_post")]

    def check(self, layer: int) -> bool:
        """Replay the unpatched input from the block above ``layer``: block outputs at the deepest layer needed
        must match the corrupted run's to rounding (relative error of the suffix's residuals), or the route
        does not fit this model. Residuals, not metric values: a logit difference in bf16 moves by rounding
        alone, while a wrong mask or position shows in every residual."""
        import torch

        layer = min(layer, self.deepest - 1)
        if layer < 0:
            return True
        try:
            suffix, _ = self._run([(layer, [], [])])
        except Exception as e:  # an architecture the route does not fit: run in full, say why
            log.warning("patching replay off (%s: %s); every patch runs in full", type(e).__name__, e)
            return False
        ref = self._act(self.deepest)[self.n:]
        rel = float((suffix[self.deepest][0].float().cpu() - ref).norm() / ref.norm().clamp(min=1e-12))
        tol = REPLAY_TOLERANCE["float32" if self.dtype == torch.float32 else "half"]
        if rel <= tol:
            return True
        log.warning("patching replay off: the unpatched input replayed from block %d differs from its full run by "
                    "%.2g (relative, block %d; allowed %.0e); every patch runs in full", layer + 1, rel,
                    self.deepest, tol)
        return False

    def batch(self, rows: Sequence[tuple[int, list[int], list[int]]]) -> Any:
        """Metric values ``[len(rows), metric]`` (float32) of patched runs given as (layer, corrupted positions,
        clean positions)."""
        return self._values(*self._run(rows), len(rows))

    def _run(self, rows: Sequence[tuple[int, list[int], list[int]]]) -> tuple[dict[int, Any], int]:
        """The replayed suffix's block outputs ``{layer: [b, S, d]}`` (at the metrics' layers above the lowest
        patched one, and at that one) and the lowest patched layer."""
        from emolens.replay import repeated, run_blocks

        b, n = len(rows), self.n
        low = min(r[0] for r in rows)
        x = self._act(low)[n:].expand(b, -1, -1).clone()  # block `low`'s output on the suffix, per row
        for r, (layer, pos, src) in enumerate(rows):
            if layer == low and pos:
                q = [p - n for p in pos]
                x[r, q] = self.setter(x[r, q], self.clean[site_hook(layer, "resid_post")][src].float())
        suffix = {low: x}
        if low < self.deepest:
            hooks = _patch_hooks(rows, self.clean, "resid_post", self.setter, shift=n, above=low)
            hooks += [(site_hook(la, "resid_post"), _store(suffix, la)) for la in self.reads if low < la < self.deepest]
            cache = repeated(self.cache, b) if self.cache is not None else None
            suffix[self.deepest] = run_blocks(self.bridge, self.spec, x.to(self.spec.device, self.dtype), low + 1,
                                              self.deepest, cache, n, hooks)
        return suffix, low

    def _full(self, layer: int, suffix: Mapping[int, Any], b: int, low: int) -> Any:
        """Residual ``[b, T, d]`` (float32, CPU) after block ``layer``: the corrupted run's below the replay,
        its prefix beside the replayed suffix above."""
        import torch

        if layer < low:
            return self._act(layer).expand(b, -1, -1)
        head = self._act(layer)[:self.n].expand(b, -1, -1)
        return torch.cat([head, suffix[layer].float().cpu()], 1)

    def _values(self, suffix: Mapping[int, Any], low: int, b: int) -> Any:
        import torch

        from emolens.replay import final_logits

        resid = {la: self._full(la, suffix, b, low) for la in self.reads}
        last = self._full(self.spec.n_layers - 1, suffix, b, low) if self.logits else None
        at: dict[int, Any] = {}  # position -> logits [b, vocab], unembedded once however many metrics read it
        cols = []
        for m in self.ms.values():
            lg = None
            if m.needs_logits and m.logit_positions is not None:
                idx = [_position(p, self.T) for p in m.logit_positions]
                for p in idx:
                    if p not in at:
                        at[p] = final_logits(self.bridge, last[:, p].to(self.spec.device, self.dtype))
                lg = torch.stack([at[p] for p in idx], 1)
            elif m.needs_logits:
                with torch.inference_mode():
                    lg = self.bridge.unembed(self.bridge.ln_final(last.to(self.spec.device, self.dtype))).float()
            cols.append(torch.as_tensor(m.fn(lg, resid)).reshape(-1).float().cpu())
        return torch.stack(cols, -1)


def _store(store: dict[int, Any], layer: int) -> Any:
    def hook(x: Any, hook: Any) -> Any:
        store[layer] = x
        return x
    return hook


def _basis(spec: ModelSpec, basis: Any | None) -> Any | None:
    """``None`` or an orthonormal ``[k, d]`` basis of the given direction(s) (refuses a wrong width)."""
    if basis is None:
        return None
    return orthonormal_basis(basis, spec)


def _grid(model: Any, corrupted_ids: Any, clean_cache: Mapping[str, Any], metrics: Any, site: str,
          layers: Sequence[int] | None, positions: Sequence[int] | None, per_position: bool, basis: Any | None,
          partner: Sequence[int | None] | None, clean_metrics: Any | None, batch_size: int,
          progress: bool, replay: bool = True) -> PatchGrid:
    import einops

    _, spec = model
    ms = _metrics(metrics)
    ls = _layers(spec, layers)
    T = len(_ids(spec, corrupted_ids, "corrupted_ids"))
    pos = list(range(T)) if positions is None else [int(p) for p in positions]
    for p in pos:
        _position(p, T)  # refuses a position outside the run
    q = _basis(spec, basis)
    setter = full_setter if q is None else directional_setter(q)
    if per_position:
        patches = [Patch(layer, (p,)) for layer in ls for p in pos]
    else:
        every = tuple(range(T)) if partner is None else tuple(p for p, x in enumerate(partner) if x is not None)
        patches = [Patch(layer, every) for layer in ls]
    vals, base = generic_activation_patch(model, corrupted_ids, clean_cache, ms, patches, site, setter, partner,
                                          batch_size, progress, replay)
    if per_position:
        vals = einops.rearrange(vals, "m (l p) -> m l p", l=len(ls))
    return PatchGrid(vals, ("layer", "pos") if per_position else ("layer",), tuple(ms), base,
                     _clean_values(clean_metrics, ms), tuple(ls), tuple(pos) if per_position else ())


def _clean_values(clean_metrics: Any, ms: Mapping[str, Metric]) -> Any:
    import torch

    if clean_metrics is None:
        return None
    v = torch.as_tensor(clean_metrics, dtype=torch.float32).reshape(-1)
    if v.numel() != len(ms):
        raise PatchingError(f"clean_metrics has {v.numel()} values for {len(ms)} metrics")
    return v


def clean_metric_values(model: Any, clean_ids: Sequence[int] | Any, metrics: Metric | Mapping[str, Metric]) -> Any:
    """The metrics on the unpatched clean run ``[metric]`` (the target a patch tries to restore)."""
    bridge, spec = model
    vals, _ = run_metrics(bridge, spec, _ids(spec, clean_ids, "clean_ids")[None], _metrics(metrics))
    return vals[0].float().cpu()


def get_act_patch_resid_post(model: Any, corrupted_ids: Any, clean_cache: Mapping[str, Any], metrics: Any,
                             layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                             basis: Any | None = None, partner: Sequence[int | None] | None = None,
                             clean_metrics: Any | None = None, batch_size: int = 16,
                             progress: bool = False, replay: bool = True) -> PatchGrid:
    """Patch the block output of each layer at each position singly: ``values [metric, layer, pos]``.
    ``basis`` (a direction ``[d]`` or rows ``[k, d]``) patches only the component in their span. ``replay``
    computes only what each patch can change (see :func:`generic_activation_patch`); False runs each in full."""
    return _grid(model, corrupted_ids, clean_cache, metrics, "resid_post", layers, positions, True, basis, partner,
                 clean_metrics, batch_size, progress, replay)


def get_act_patch_resid_post_by_layer(model: Any, corrupted_ids: Any, clean_cache: Mapping[str, Any], metrics: Any,
                                      layers: Sequence[int] | None = None, basis: Any | None = None,
                                      partner: Sequence[int | None] | None = None, clean_metrics: Any | None = None,
                                      batch_size: int = 16, progress: bool = False,
                                      replay: bool = True) -> PatchGrid:
    """Patch the block output of each layer at every position that has a clean partner: ``[metric, layer]``."""
    return _grid(model, corrupted_ids, clean_cache, metrics, "resid_post", layers, None, False, basis, partner,
                 clean_metrics, batch_size, progress, replay)


def get_act_patch_attn_out(model: Any, corrupted_ids: Any, clean_cache: Mapping[str, Any], metrics: Any,
                           layers: Sequence[int] | None = None, partner: Sequence[int | None] | None = None,
                           clean_metrics: Any | None = None, batch_size: int = 16, progress: bool = False) -> PatchGrid:
    """Patch each layer's attention output at every partnered position: ``[metric, layer]``."""
    return _grid(model, corrupted_ids, clean_cache, metrics, "attn_out", layers, None, False, None, partner,
                 clean_metrics, batch_size, progress)


def get_act_patch_mlp_out(model: Any, corrupted_ids: Any, clean_cache: Mapping[str, Any], metrics: Any,
                          layers: Sequence[int] | None = None, partner: Sequence[int | None] | None = None,
                          clean_metrics: Any | None = None, batch_size: int = 16, progress: bool = False) -> PatchGrid:
    """Patch each layer's MLP output at every partnered position: ``[metric, layer]``."""
    return _grid(model, corrupted_ids, clean_cache, metrics, "mlp_out", layers, None, False, None, partner,
                 clean_metrics, batch_size, progress)


# ---- attribution patching -----------------------------------------------------------------------------------


def attribution_patch_resid(model: Any, corrupted_ids: Any, clean_cache: Mapping[str, Any], metrics: Any,
                            layers: Sequence[int] | None = None, basis: Any | None = None,
                            partner: Sequence[int | None] | None = None) -> PatchGrid:
    """First-order estimate of :func:`get_act_patch_resid_post` from one forward and one backward per metric:
    ``metric(corrupt) + (clean - corrupt) . d metric / d resid`` at each layer and position (along ``basis``
    only, when given). Exact when the metric is linear in the patched activation; a good guide, not a
    substitute, elsewhere (compare with exact patching on a sample)."""
    import torch

    bridge, spec = model
    ms = _metrics(metrics)
    ids = _ids(spec, corrupted_ids, "corrupted_ids")
    T = len(ids)
    ls = _layers(spec, layers)
    names = [site_hook(layer, "resid_post") for layer in ls]
    n_clean = _check_cache(clean_cache, names[0], None, spec.d_model).shape[0]
    part = _partner(partner, T, n_clean)
    q = _basis(spec, basis)
    vals, cap = run_metrics(bridge, spec, ids[None], ms, grad=True, capture=names)
    acts = [cap[n] for n in names]
    base = vals[0].detach().float().cpu()
    out = torch.full((len(ms), len(ls), T), float("nan"))
    has = [p for p in range(T) if part[p] is not None]
    src_idx = [int(part[p]) for p in has]  # type: ignore[arg-type]
    for m in range(len(ms)):
        with torch.enable_grad():  # indexing under no_grad would detach the metric from its graph
            grads = torch.autograd.grad(vals[0, m], acts, retain_graph=m < len(ms) - 1, allow_unused=True)
        for j, (name, g) in enumerate(zip(names, grads)):
            if g is None:  # the metric does not depend on this layer (it reads an earlier one)
                out[m, j, has] = base[m]
                continue
            delta = clean_cache[name][src_idx].float() - acts[j][0, has].detach().float().cpu()
            if q is not None:
                delta = (delta @ q.T) @ q
            out[m, j, has] = base[m] + (delta * g[0, has].float().cpu()).sum(-1)
    return PatchGrid(out, ("layer", "pos"), tuple(ms), base, None, tuple(ls), tuple(range(T)))


# ---- ablation on top of emolens.interventions --------------------------------------------------------------


@contextmanager
def ablation_by_layer(bridge: TransformerBridge, spec: ModelSpec, bases: Mapping[int, Any],
                      means: Mapping[int, Any] | None = None, site: str = "resid_post") -> Iterator[None]:
    """At each layer of ``bases`` ({layer: direction [d] or rows [k, d]}), set the residual's component in
    their span to zero (directional ablation) or, with ``means`` ({layer: [k] coordinates in the orthonormal
    basis :func:`emolens.interventions.orthonormal_basis` returns}), to that fixed mean (mean ablation, which
    keeps the typical offset along the direction and removes only its variation). Hooks go on exit."""
    if site not in ("resid_post", "resid_pre"):
        raise PatchingError(f"ablation site {site!r} not allowed: 'resid_post' or 'resid_pre'")
    if not bases:
        raise PatchingError("no layers to ablate at")
    hooks = []
    for layer, dirs in bases.items():
        layer = spec.check_layer(layer)
        q = orthonormal_basis(dirs, spec)
        m = None
        if means is not None:
            import torch

            if layer not in means:
                raise PatchingError(f"mean ablation: no mean given for layer {layer}")
            m = torch.as_tensor(means[layer], dtype=torch.float32).reshape(-1)
            if m.numel() != q.shape[0]:
                raise PatchingError(f"mean for layer {layer} has {m.numel()} values for a {q.shape[0]}-dim subspace")
        hooks.append((site_hook(layer, site), _ablate_hook(q, m)))
    with bridge.hooks(fwd_hooks=hooks):
        yield


def _ablate_hook(q: Any, mean: Any | None) -> Any:
    def hook(resid: Any, hook: Any) -> Any:
        b = q.to(resid.device, resid.dtype)
        coords = resid @ b.T
        if mean is not None:
            coords = coords - mean.to(resid.device, resid.dtype)
        return resid - coords @ b
    return hook


def subspace_means(model: Any, texts: Sequence[str], bases: Mapping[int, Any]) -> dict[int, Any]:
    """Mean coordinates ``{layer: [k]}`` of ordinary tokens' residuals (first position and special tokens
    excluded, as everywhere) in each layer's orthonormalised basis: the values mean ablation holds fixed."""
    import torch

    from emolens.activations import forward_layers, pool_positions

    bridge, spec = model
    qs = {spec.check_layer(layer): orthonormal_basis(d, spec) for layer, d in bases.items()}
    sums = {layer: torch.zeros(q.shape[0]) for layer, q in qs.items()}
    n = 0
    specials = special_ids(spec)
    for t in texts:
        ids = spec.encode(t)
        pos = pool_positions(ids, specials)
        if not pos:
            continue
        n += len(pos)

        def on_layer(layer: int, resid: Any, offsets: Any, pos: list[int] = pos) -> None:
            sums[layer] += (resid[0, pos].float().cpu() @ qs[layer].T).sum(0)

        forward_layers(bridge, spec, [ids], sorted(qs), "resid_post", on_layer)
    if not n:
        raise PatchingError("no ordinary tokens in the texts: cannot estimate a mean to ablate to")
    return {layer: s / n for layer, s in sums.items()}


def random_subspace(k: int, d: int, seed: int = 0) -> Any:
    """``k`` orthonormal random directions ``[k, d]`` (Gaussian, then QR): the same-dimension control of a
    subspace patch or ablation."""
    import torch

    if not 0 < k <= d:
        raise PatchingError(f"a random subspace needs 0 < k <= d, got k={k}, d={d}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((d, k), generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x)
    return q.T.float()


def check_direction(spec: ModelSpec, direction: Any) -> Any:
    """A unit ``[d]`` direction of the model's width (clear error otherwise)."""
    try:
        return unit_direction(direction, spec)
    except ValueError as e:
        raise PatchingError(str(e)) from None


__all__ = ["AlignedPair", "Metric", "Patch", "PatchGrid", "PatchingError", "ModelError", "ablation_by_layer",
           "align_pair", "align_tokens", "alignment_report", "attribution_patch_resid", "char_to_token_span",
           "check_direction", "clean_metric_values", "directional_setter", "edit_span", "full_setter",
           "generic_activation_patch", "get_act_patch_attn_out", "get_act_patch_mlp_out",
           "get_act_patch_resid_post", "get_act_patch_resid_post_by_layer", "logit_diff_metric", "random_subspace",
           "readout_metric", "replay_blockers", "run_metrics", "run_with_cache", "site_hook", "subspace_means"]


def stack_bases(bases: Sequence[Any], spec: ModelSpec) -> Any:
    """Per-row orthonormal bases ``[B, k_max, d]`` (each row's own span, zero rows padding the smaller ones: a
    zero row removes nothing), for ablating a different subspace in each row of one batch."""
    import torch

    qs = [orthonormal_basis(b, spec) for b in bases]
    k = max(q.shape[0] for q in qs)
    out = torch.zeros((len(qs), k, spec.d_model))
    for i, q in enumerate(qs):
        out[i, :q.shape[0]] = q
    return out


@contextmanager
def rowwise_ablation(bridge: TransformerBridge, spec: ModelSpec, bases: Mapping[int, Any],
                     site: str = "resid_post") -> Iterator[None]:
    """Directional ablation with a different subspace per batch row: ``bases`` is ``{layer: [B, k, d]}`` from
    :func:`stack_bases`, row b of the batch losing its component in the span of ``bases[layer][b]``. Equal to
    :func:`emolens.interventions.ablation` run row by row (tested), in one forward pass."""
    import einops

    if site not in ("resid_post", "resid_pre"):
        raise PatchingError(f"ablation site {site!r} not allowed: 'resid_post' or 'resid_pre'")

    def make(q: Any) -> Any:
        def hook(resid: Any, hook: Any) -> Any:
            if resid.shape[0] != q.shape[0]:
                raise PatchingError(f"row-wise ablation has {q.shape[0]} rows of bases for a batch of {resid.shape[0]}")
            b = q.to(resid.device, resid.dtype)
            coords = einops.einsum(resid, b, "b t d, b k d -> b t k")
            return resid - einops.einsum(coords, b, "b t k, b k d -> b t d")
        return hook

    hooks = []
    for layer, q in bases.items():
        if q.dim() != 3 or q.shape[-1] != spec.d_model:
            raise PatchingError(f"row-wise bases for layer {layer} must be [B, k, {spec.d_model}], got {tuple(q.shape)}")
        hooks.append((site_hook(spec.check_layer(layer), site), make(q)))
    with bridge.hooks(fwd_hooks=hooks):
        yield
