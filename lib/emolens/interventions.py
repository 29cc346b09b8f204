"""Interventions as context managers on TransformerLens hooks; every hook is removed on exit, even on error.

Steering strength ``alpha`` is a fraction of the typical residual-stream norm at the steered layer, as in the
paper (e.g. 0.05 adds a vector 5% as long as a typical token's residual).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from emolens.activations import forward_layers, hook_name, pool_positions, special_ids
from emolens.models.spec import ModelSpec

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge


def residual_norm(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layer: int, site: str = "resid_post") -> float:
    """Median residual norm at ``layer`` over ordinary tokens (first position and special tokens excluded)."""
    import torch

    layer = spec.check_layer(layer)
    specials = special_ids(spec)
    norms: list[Any] = []
    for t in texts:
        ids = spec.encode(t)
        pos = pool_positions(ids, specials)
        if not pos:
            continue

        def on_layer(_: int, resid: Any, offsets: list[int], pos: list[int] = pos) -> None:
            norms.append(resid[0, pos].float().norm(dim=-1).cpu())

        forward_layers(bridge, spec, [ids], [layer], site, on_layer)
    if not norms:
        raise ValueError("no ordinary tokens in the texts given; cannot measure a residual norm")
    return float(torch.cat(norms).median())


def finite_number(name: str, value: Any, positive: bool = False) -> float:
    """``value`` as a float, refusing strings, bools, NaN and inf (and non-positive values when ``positive``)."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def unit_direction(direction: torch.Tensor, spec: ModelSpec, what: str = "direction") -> torch.Tensor:
    """``direction`` as a float32 unit vector of the model's width; refuses NaN/inf and the zero vector."""
    import torch

    d = torch.as_tensor(direction, dtype=torch.float32).detach().cpu()
    if d.shape != (spec.d_model,):
        raise ValueError(f"{what} has shape {tuple(d.shape)}, expected ({spec.d_model},) for {spec.name}")
    if not torch.isfinite(d).all():
        raise ValueError(f"{what} contains NaN or inf")
    n = float(d.norm())
    if n < 1e-8:
        raise ValueError(f"{what} is (numerically) zero: it has no direction to steer along or ablate")
    return d / n


def orthonormal_basis(directions: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """``[k, d]`` orthonormal rows spanning ``directions`` (``[d]`` or ``[k, d]``); refuses NaN, zero rows and
    rows that add no new dimension (a basis that silently lost a direction would ablate less than asked)."""
    import torch

    d = torch.as_tensor(directions, dtype=torch.float32).detach().cpu()
    rows = d[None] if d.dim() == 1 else d
    if rows.dim() != 2 or rows.shape[0] == 0:
        raise ValueError(f"ablation directions must be [d] or [k, d], got shape {tuple(d.shape)}")
    for i, r in enumerate(rows):
        unit_direction(r, spec, f"ablation direction {i}" if rows.shape[0] > 1 else "ablation direction")
    q, r = torch.linalg.qr(rows.double().T)
    diag = r.diagonal().abs()
    if (diag < 1e-6 * diag.max()).any():
        raise ValueError(f"the {rows.shape[0]} ablation directions are linearly dependent: give independent rows")
    return q.T.float()


def steering_layers(spec: ModelSpec, layers: int | Sequence[int]) -> list[int]:
    """Layers as block indices (negative counts from the end), each checked against the model's depth."""
    if isinstance(layers, bool) or isinstance(layers, str):
        raise TypeError(f"layers must be an int or a sequence of ints, got {layers!r}")
    out = [layers] if isinstance(layers, int) else list(layers)
    if not out:
        raise ValueError("no layers given")
    return [spec.check_layer(layer) for layer in out]


@contextmanager
def steering(bridge: TransformerBridge, spec: ModelSpec, direction: torch.Tensor, layers: int | Sequence[int], alpha: float,
             norm: float, site: str = "resid_post", from_position: int = 0) -> Iterator[None]:
    """Add ``alpha * norm * direction/|direction|`` to the residual at ``layers`` for positions >= ``from_position``.

    ``alpha = 0`` leaves the model exactly unchanged. With a KV cache during generation each step passes one
    new token: a one-token pass that follows a longer one (in this context) is read as the next position of
    that sequence, so it is steered once it reaches ``from_position`` (tested against uncached generation).
    """
    layers = steering_layers(spec, layers)
    alpha = finite_number("alpha", alpha)
    norm = finite_number("norm", norm, positive=True)
    if isinstance(from_position, bool) or not isinstance(from_position, int) or from_position < 0:
        raise ValueError(f"from_position must be an int >= 0, got {from_position!r}")
    delta = alpha * norm * unit_direction(direction, spec, "steering direction")

    def make_hook() -> Any:
        seen = [0]  # positions so far of the current sequence at this hook

        def add(resid: Any, hook: Any) -> Any:
            T = resid.shape[1]
            start = seen[0] if T == 1 and seen[0] > 0 else 0  # a cached decoding step continues the sequence
            seen[0] = start + T
            if alpha == 0 or start + T <= from_position:
                return resid
            d = delta.to(resid.device, resid.dtype)
            if from_position <= start:
                return resid + d
            out = resid.clone()
            out[:, from_position - start:] += d
            return out
        return add

    with bridge.hooks(fwd_hooks=[(hook_name(layer, site), make_hook()) for layer in layers]):
        yield


@contextmanager
def ablation(bridge: TransformerBridge, spec: ModelSpec, direction: torch.Tensor, layers: int | Sequence[int],
             site: str = "resid_post") -> Iterator[None]:
    """Project ``direction`` (``[d]``) or the span of a subspace's rows (``[k, d]``) out of the residual at
    ``layers`` (directional ablation); the rows are orthonormalised here."""
    layers = steering_layers(spec, layers)
    basis = orthonormal_basis(direction, spec)

    def remove(resid: Any, hook: Any) -> Any:
        q = basis.to(resid.device, resid.dtype)  # [k, d]
        return resid - (resid @ q.T) @ q

    with bridge.hooks(fwd_hooks=[(hook_name(layer, site), remove) for layer in layers]):
        yield


def intervention_cost(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str],
                      intervention: Any) -> dict[str, float]:
    """The damage an intervention does on neutral text, to set beside its effect: the mean KL divergence
    (nats per token) of the intervened next-token distributions from the clean ones, and the ratio of the
    texts' perplexity with and without it. ``intervention`` is a zero-argument callable returning a context
    manager (e.g. ``lambda: vectors.steer(model, "calm", 0.1, layers=19)``); 1.0 and 0.0 mean no damage."""
    import torch

    from emolens.fastpath import maybe_hf_internals

    kls, nll_clean, nll_int, n_tok = [], 0.0, 0.0, 0
    for t in texts:
        ids = torch.tensor([spec.encode(t)], device=spec.device)
        if ids.shape[1] < 2:
            continue
        with torch.inference_mode(), maybe_hf_internals(bridge):
            clean = torch.log_softmax(bridge(ids)[0, :-1].float(), -1)
        with torch.inference_mode(), intervention(), maybe_hf_internals(bridge):
            hit = torch.log_softmax(bridge(ids)[0, :-1].float(), -1)
        target = ids[0, 1:]
        kls.append((clean.exp() * (clean - hit)).sum(-1).cpu())
        nll_clean += float(-clean.gather(-1, target[:, None]).sum())
        nll_int += float(-hit.gather(-1, target[:, None]).sum())
        n_tok += int(target.numel())
    if not n_tok:
        raise ValueError("no text has two or more tokens: nothing to measure the cost on")
    import math

    return {"kl_per_token": float(torch.cat(kls).mean()), "perplexity_ratio": math.exp((nll_int - nll_clean) / n_tok),
            "tokens": n_tok}


# ---- steering on token spans ---------------------------------------------------------------------------------
# A span is [start, end) in one sequence's own token positions (as ``spec.encode`` numbers them); ``end=None``
# runs to the end of the sequence and on through generated tokens. A row may carry several spans.
Span = tuple[int, "int | None"]
SPAN_KINDS = ("prompt", "reply", "all")


def token_span(spec: ModelSpec, text: str, char_start: int, char_end: int) -> tuple[int, int]:
    """Token positions ``[start, end)`` in ``spec.encode(text)`` of the tokens that overlap characters
    ``[char_start, char_end)``. A zero-width character span gives a zero-width token span (a no-op to steer)."""
    if isinstance(char_start, bool) or isinstance(char_end, bool) or not 0 <= char_start <= char_end <= len(text):
        raise ValueError(f"character span [{char_start}, {char_end}) is out of range for a text of {len(text)} characters")
    enc = spec.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = spec.encode(text)
    shift = len(ids) - len(enc.input_ids)  # a BOS that encode prepends
    if shift < 0 or ids[shift:] != list(enc.input_ids):
        raise ValueError(f"{spec.name}: tokenizer offsets do not line up with spec.encode; cannot map a character span")
    offsets = enc["offset_mapping"]
    if char_start == char_end:
        before = sum(1 for s, _ in offsets if s < char_start)
        return shift + before, shift + before
    hit = [k for k, (s, e) in enumerate(offsets) if s < char_end and e > char_start]
    if not hit:
        raise ValueError(f"no token covers characters [{char_start}, {char_end}) of the text")
    return shift + hit[0], shift + hit[-1] + 1


def text_span(spec: ModelSpec, text: str, part: str, occurrence: int = 0) -> tuple[int, int]:
    """Token span of the ``occurrence``-th appearance of ``part`` inside ``text`` (e.g. an activity in a prompt)."""
    if not part:
        raise ValueError("the part to find is empty")
    at = -1
    for _ in range(occurrence + 1):
        at = text.find(part, at + 1)
        if at < 0:
            raise ValueError(f"{part!r} does not occur {occurrence + 1} time(s) in the prompt")
    return token_span(spec, text, at, at + len(part))


def named_span(spec: ModelSpec, prompt: str, reply: str, kind: str) -> Span:
    """The "prompt", "reply" or "all" span of ``prompt + reply`` (``reply`` may be empty: generation to come)."""
    if kind not in SPAN_KINDS:
        raise ValueError(f"span kind {kind!r} not allowed: choose one of {SPAN_KINDS}")
    n_prompt = len(spec.encode(prompt))
    return {"prompt": (0, n_prompt), "reply": (n_prompt, None), "all": (0, None)}[kind]


def _check_spans(spans: Sequence[Sequence[Span]], lengths: Sequence[int] | None) -> list[list[Span]]:
    if lengths is not None and len(lengths) != len(spans):
        raise ValueError(f"{len(spans)} rows of spans but {len(lengths)} lengths")
    out = []
    for r, row in enumerate(spans):
        checked = []
        for sp in row:
            start, end = sp
            bad = isinstance(start, bool) or not isinstance(start, int) or start < 0 or (
                end is not None and (not isinstance(end, int) or end < start))
            if bad or (lengths is not None and end is not None and end > lengths[r]) or (
                    lengths is not None and start > lengths[r]):
                limit = f" (row length {lengths[r]})" if lengths is not None else ""
                raise ValueError(f"span {sp!r} of row {r} is out of range{limit}")
            checked.append((start, end))
        out.append(checked)
    return out


def _per_layer(value: Any, layers: list[int], what: str) -> dict[int, Any]:
    """A value given once (for every layer) or as a mapping layer -> value, as a dict over ``layers``."""
    if isinstance(value, dict):
        missing = [la for la in layers if la not in value]
        if missing:
            raise ValueError(f"{what} given for layers {sorted(value)} but not for {missing}")
        return {la: value[la] for la in layers}
    return {la: value for la in layers}


@contextmanager
def span_steering(bridge: TransformerBridge, spec: ModelSpec, direction: Any, layers: int | Sequence[int],
                  alpha: float, norm: Any, spans: Sequence[Sequence[Span]], lengths: Sequence[int] | None = None,
                  padding_side: str = "right", site: str = "resid_post") -> Iterator[None]:
    """Add ``alpha * norm_l * direction_l/|direction_l|`` at each of ``layers``, at the token positions inside
    ``spans`` only: ``spans[r]`` lists the spans of batch row r. ``direction`` and ``norm`` are one value for
    every layer or a dict layer -> value (each layer's own vector and typical residual norm).

    Positions are each sequence's own; with left padding give ``lengths`` (row r's position p then sits at
    ``T - lengths[r] + p``). A one-token pass after a longer one (cached generation) continues the sequence,
    as in :func:`steering`. Tokens outside the spans are untouched, bit for bit; ``alpha = 0`` or empty spans
    leave the model exactly unchanged.
    """
    import torch

    layers = steering_layers(spec, layers)
    alpha = finite_number("alpha", alpha)
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side {padding_side!r} not allowed: 'right' or 'left'")
    if padding_side == "left" and lengths is None:
        raise ValueError("left padding needs the rows' lengths to place their spans")
    rows = _check_spans(spans, lengths)
    dirs = _per_layer(direction, layers, "direction")
    norms = {la: finite_number(f"norm at layer {la}", v, positive=True)
             for la, v in _per_layer(norm, layers, "norm").items()}
    deltas = {la: alpha * norms[la] * unit_direction(dirs[la], spec, f"steering direction at layer {la}")
              for la in layers}

    def mask_for(B: int, T: int, start: int) -> Any:
        """[B, T] True where the (padded) position is inside a row's span."""
        if B != len(rows):
            raise ValueError(f"span steering was given spans for {len(rows)} rows, the batch has {B}")
        m = torch.zeros((B, T), dtype=torch.bool)
        for r, row in enumerate(rows):
            off = T - lengths[r] if (padding_side == "left" and lengths is not None and start == 0) else 0
            for s, e in row:
                lo, hi = s - start + off, (T if e is None else e - start + off)
                if lengths is None and e is not None and e > start + T:
                    raise ValueError(f"span ({s}, {e}) of row {r} runs past the sequence (length {start + T})")
                lo, hi = max(lo, 0), min(hi, T)
                if hi > lo:
                    m[r, lo:hi] = True
        return m

    def make_hook(layer: int) -> Any:
        seen = [0]

        def add(resid: Any, hook: Any) -> Any:
            B, T = resid.shape[:2]
            start = seen[0] if T == 1 and seen[0] > 0 else 0
            seen[0] = start + T
            if alpha == 0:
                return resid
            m = mask_for(B, T, start).to(resid.device)
            if not m.any():
                return resid
            out = resid.clone()
            out[m] += deltas[layer].to(resid.device, resid.dtype)
            return out
        return add

    with bridge.hooks(fwd_hooks=[(hook_name(layer, site), make_hook(layer)) for layer in layers]):
        yield


def span_cost(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], spans: Sequence[Span],
              intervention: Any) -> dict[str, float]:
    """:func:`intervention_cost` for an intervention placed on one span per text: ``intervention(span)``
    returns the context manager for that text. KL and perplexity are pooled over every text's tokens."""
    import math

    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} spans")
    kl, log_ratio, n = 0.0, 0.0, 0
    for t, sp in zip(texts, spans):
        c = intervention_cost(bridge, spec, [t], lambda sp=sp: intervention(sp))
        kl += c["kl_per_token"] * c["tokens"]
        log_ratio += math.log(c["perplexity_ratio"]) * c["tokens"]
        n += c["tokens"]
    return {"kl_per_token": kl / n, "perplexity_ratio": math.exp(log_ratio / n), "tokens": n}
