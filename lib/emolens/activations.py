"""The extraction engine: residual-stream activations through TransformerLens hooks, pooled on the fly.

Texts are tokenized once, sorted by length into batches (little padding), run with an attention mask and
stopped after the deepest layer asked for (the unembedding is never computed). Inside each layer's hook the
residual is reduced at once to what is needed: per-text pooled sums, or the running mean and covariance of
neutral tokens. No per-token activations of the corpus are ever stored.

Positions: the first sequence position carries a residual norm ~100x the typical token's ("massive
activations"); it and all special tokens (BOS, chat markers, padding) are excluded from every pool and
statistic. Story positions are counted over the text's own (non-special) tokens, so ``start=50`` skips the
first 50 tokens of the story whatever the BOS convention.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emolens.models.spec import ModelError, ModelSpec

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SITES = ("resid_post", "resid_pre")
WEIGHTINGS = ("story", "token")


@dataclass(frozen=True)
class Pooling:
    """Which token positions of a text are averaged: own-token indices in [start, end)."""

    start: int = 50
    end: int | None = None
    weighting: str = "story"  # "story": mean per story, then per emotion (paper); "token": every token equal

    def __post_init__(self) -> None:
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"pooling window [{self.start}, {self.end}) is empty or negative")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r} not allowed: choose one of {WEIGHTINGS}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hook_name(layer: int, site: str = "resid_post") -> str:
    if site not in SITES:
        raise ValueError(f"site {site!r} not allowed: choose one of {SITES}")
    return f"blocks.{layer}.hook_{site}"


def resolve_layers(spec: ModelSpec, layers: Iterable[int] | str | int | None) -> list[int]:
    """``None``/"all" = every block; an int or a list of ints is checked against the model's depth."""
    if layers is None or layers == "all":
        return list(range(spec.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = sorted({spec.check_layer(int(layer)) for layer in layers})
    if not out:
        raise ModelError("no layers requested")
    return out


def special_ids(spec: ModelSpec) -> set[int]:
    tok = spec.tokenizer
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tok, name, None)
        if v is not None:
            ids.add(v)
    return ids


def pool_positions(ids: Sequence[int], specials: set[int], start: int = 0, end: int | None = None) -> list[int]:
    """Sequence positions to pool: non-special tokens whose own-token index is in [start, end), never position 0."""
    out, own = [], 0
    for pos, t in enumerate(ids):
        if t in specials:
            continue
        if pos > 0 and own >= start and (end is None or own < end):
            out.append(pos)
        own += 1
    return out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _pad_id(spec: ModelSpec) -> int:
    tok = spec.tokenizer
    for v in (tok.pad_token_id, tok.eos_token_id, 0):
        if v is not None:
            return int(v)
    return 0


def forward_layers(bridge: TransformerBridge, spec: ModelSpec, seqs: Sequence[Sequence[int]], layers: Sequence[int],
                   site: str, on_layer: Callable[[int, Any, Any], None], padding_side: str = "right",
                   fast: bool = True) -> None:
    """Run one padded batch and call ``on_layer(layer, resid[b, T, d], offsets[b])`` inside each hook.

    ``offsets[i]`` is where sequence i starts in the padded tensor (0 for right padding), so position p of
    sequence i is ``resid[i, offsets[i] + p]``. The forward pass stops after ``max(layers)``.
    ``fast`` runs the blocks' insides as plain HF modules (``emolens.fastpath``) when that is safe; the hooks
    read the same residual stream either way.
    """
    import torch
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    from emolens.fastpath import maybe_hf_internals

    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side {padding_side!r} not allowed: 'right' or 'left'")
    T = max(len(s) for s in seqs)
    pad = _pad_id(spec)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    offsets = []
    for i, s in enumerate(seqs):
        o = T - len(s) if padding_side == "left" else 0
        ids[i, o:o + len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, o:o + len(s)] = 1
        offsets.append(o)
    # Explicit positions make left padding exact for every architecture, not only those that infer them.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = spec.device
    last = max(layers)
    hooks = []
    for layer in layers:
        def fn(resid: Any, hook: Any, layer: int = layer) -> Any:
            on_layer(layer, resid, offsets)
            if layer == last:
                # Stop right here. The bridge's stop_at_layer only acts at the *start* of a block, so at the
                # last block it would still run the final norm and the unembedding (~25% of the FLOPs of a
                # 135M model with a 49k vocabulary). The bridge catches its own exception and cleans up.
                raise StopAtLayerException(resid)
            return resid
        hooks.append((hook_name(layer, site), fn))
    with torch.inference_mode(), maybe_hf_internals(bridge, fast):
        bridge.run_with_hooks(ids.to(device), fwd_hooks=hooks, attention_mask=mask.to(device),
                              position_ids=positions.to(device), return_type=None, stop_at_layer=last + 1)


def pooled_index(offsets: Sequence[int], positions: Sequence[Sequence[int]], device: Any = None) -> tuple[Any, Any]:
    """``(rows, cols)`` index tensors selecting the pooled tokens of a padded batch: ``resid[rows, cols]`` is
    ``[n_pooled, d]``, row r contributing ``resid[r, offsets[r] + p]`` for each p in ``positions[r]``, in order."""
    import torch

    rows = torch.tensor([r for r, ps in enumerate(positions) for _ in ps], dtype=torch.long, device=device)
    cols = torch.tensor([offsets[r] + p for r, ps in enumerate(positions) for p in ps], dtype=torch.long,
                        device=device)
    return rows, cols


def pooled_reader(positions: Sequence[Sequence[int]], fn: Callable[[int, Any], None]) -> Callable[[int, Any, Any], None]:
    """An ``on_layer`` for ``forward_layers`` that hands ``fn(layer, pooled[n_pooled, d])`` the pooled tokens
    of the batch, building the index once per device (at the first layer there) and reusing it for the others."""
    index: dict[Any, tuple[Any, Any]] = {}  # one per device: blocks of a model split by device_map differ

    def on_layer(layer: int, resid: Any, offsets: Any) -> None:
        if resid.device not in index:
            index[resid.device] = pooled_index(offsets, positions, resid.device)
        fn(layer, resid[index[resid.device]])
    return on_layer


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def pooled_means(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layers: Any = None,
                 pooling: Pooling = Pooling(), site: str = "resid_post", batch_size: int = 8,
                 padding_side: str = "right", progress: bool = True, fast: bool = True) -> tuple[Any, Any]:
    """Per-text mean residual over the pooled positions: ``(means[n, L, d] float32, counts[n])``.

    A text with no position in the window gets count 0 and a NaN row (with a warning naming it); callers skip it.
    """
    import torch

    layers = resolve_layers(spec, layers)
    specials = special_ids(spec)
    toks = [spec.encode(t) for t in texts]
    pos = [pool_positions(t, specials, pooling.start, pooling.end) for t in toks]
    n, L, d = len(texts), len(layers), spec.d_model
    sums = torch.zeros((n, L, d), dtype=torch.float32)
    counts = torch.tensor([len(p) for p in pos], dtype=torch.long)
    li = {layer: j for j, layer in enumerate(layers)}
    bar = _progress(n, "pooling", progress)
    for batch in length_batches([len(t) for t in toks], batch_size):
        batch = [i for i in batch if counts[i] > 0]
        if not batch:
            continue
        owner = torch.tensor([i for i in batch for _ in pos[i]], dtype=torch.long)

        def add(layer: int, x: Any, owner: Any = owner) -> None:
            sums[:, li[layer]].index_add_(0, owner, x.float().cpu())

        forward_layers(bridge, spec, [toks[i] for i in batch], layers, site,
                       pooled_reader([pos[i] for i in batch], add), padding_side, fast)
        bar.update(len(batch))
    bar.close()
    means = sums / counts.clamp(min=1).view(-1, 1, 1)
    short = (counts == 0).nonzero().flatten().tolist()
    if short:
        means[short] = float("nan")  # never a number: a zero row would enter averages as a real reading
        warnings.warn(f"{len(short)} of {n} texts have no token in the pooling window {pooling.start}..{pooling.end} "
                      f"(indices {short[:20]}{'...' if len(short) > 20 else ''}); their rows are NaN", stacklevel=2)
    return means, counts


ACCUMULATIONS = ("float64", "float32")


def accumulation_dtype(model_dtype: str) -> str:
    """The dtype neutral statistics accumulate in, by the model's dtype (the dtype policy).

    float32 models: float64, as always (cheap at these widths on a CPU, and the cached numbers stay the same).
    bfloat16 / float16 models: float32. Their activations carry 8 (11) mantissa bits, so float32 sums of
    batch-centred products lose nothing measurable, and GPUs run float32 at full speed where float64 runs at
    1/2 to 1/64 of it; the accumulators also take half the memory (L x d x d per layer set).
    """
    return "float64" if model_dtype == "float32" else "float32"


def check_accumulation(accumulate: str) -> str:
    if accumulate not in ACCUMULATIONS:
        raise ValueError(f"accumulate {accumulate!r} not allowed: choose one of {ACCUMULATIONS}")
    return accumulate


def neutral_moments(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layers: Any = None,
                    site: str = "resid_post", batch_size: int = 8, start: int = 0, progress: bool = True,
                    fast: bool = True, accumulate: str | None = None) -> dict[str, Any]:
    """Token count ``n``, mean ``[L, d]`` and centred sum of squares ``m2 [L, d, d]`` (float64 on the CPU when
    returned) of the pooled tokens of ``texts``.

    Each batch is centred on its own mean before its products are summed, and batches are merged with the
    pairwise update of Chan, Golub & LeVeque (1979), so no raw second moment (whose subtraction of n mean mean^T
    loses digits) is ever formed; this is what makes float32 accumulation safe. Accumulators live on each
    layer's own device (``accumulate`` dtype, default by :func:`accumulation_dtype`). Ranks of a distributed
    run merge their moments the same way (``emolens.distributed``).
    """
    import torch

    layers = resolve_layers(spec, layers)
    acc = getattr(torch, check_accumulation(accumulate or accumulation_dtype(spec.dtype)))
    specials = special_ids(spec)
    toks = [spec.encode(t) for t in texts]
    pos = [pool_positions(t, specials, start, None) for t in toks]
    L, d = len(layers), spec.d_model
    state: dict[int, list[Any]] = {}  # layer index -> [n, mean, m2]
    li = {layer: j for j, layer in enumerate(layers)}
    bar = _progress(len(texts), "neutral statistics", progress)
    for batch in length_batches([len(t) for t in toks], batch_size):
        batch = [i for i in batch if pos[i]]
        if not batch:
            continue

        def merge(layer: int, x: Any) -> None:
            x = x.to(acc)
            nb, mb = x.shape[0], x.mean(0)
            xc = x - mb
            m2b = xc.T @ xc
            j = li[layer]
            if j not in state:
                state[j] = [nb, mb, m2b]
                return
            n, mean, m2 = state[j]
            delta = mb - mean
            m2 += m2b + torch.outer(delta, delta) * (n * nb / (n + nb))
            mean += delta * (nb / (n + nb))
            state[j][0] = n + nb

        forward_layers(bridge, spec, [toks[i] for i in batch], layers, site,
                       pooled_reader([pos[i] for i in batch], merge), fast=fast)
        bar.update(len(batch))
    bar.close()
    n = sum(len(p) for p in pos)
    mean = torch.zeros((L, d), dtype=torch.float64)
    m2 = torch.zeros((L, d, d), dtype=torch.float64)
    for j, (_, mu, sq) in state.items():
        mean[j], m2[j] = mu.double().cpu(), sq.double().cpu()
    return {"n_tokens": n, "layers": layers, "mean": mean, "m2": m2}


def neutral_statistics(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layers: Any = None,
                       site: str = "resid_post", batch_size: int = 8, start: int = 0,
                       progress: bool = True, fast: bool = True, accumulate: str | None = None) -> dict[str, Any]:
    """Token count, mean and covariance (float64 tensors) of pooled-token activations at each layer.

    Accumulated batch by batch (:func:`neutral_moments`), so the neutral PCA needs no per-token storage.
    """
    st = neutral_moments(bridge, spec, texts, layers, site, batch_size, start, progress, fast, accumulate)
    return covariance_from_moments(st)


def covariance_from_moments(st: dict[str, Any]) -> dict[str, Any]:
    """``{n_tokens, layers, mean, cov}`` from :func:`neutral_moments`' ``m2``: cov = m2 / (n - 1)."""
    n = st["n_tokens"]
    if n < 2:
        raise ValueError("neutral texts contain fewer than 2 poolable tokens; cannot estimate a covariance")
    return {"n_tokens": n, "layers": st["layers"], "mean": st["mean"], "cov": st["m2"] / (n - 1)}


def token_residuals(bridge: TransformerBridge, spec: ModelSpec, text: str, layers: Any = None,
                    site: str = "resid_post", fast: bool = True) -> tuple[list[int], Any]:
    """Token ids of ``text`` and its residual stream ``[T, L, d]`` (float32) at the requested layers."""
    import torch

    layers = resolve_layers(spec, layers)
    ids = spec.encode(text)
    out = torch.zeros((len(ids), len(layers), spec.d_model), dtype=torch.float32)
    li = {layer: j for j, layer in enumerate(layers)}

    def on_layer(layer: int, resid: Any, offsets: list[int]) -> None:
        out[:, li[layer]] = resid[0].float().cpu()

    forward_layers(bridge, spec, [ids], layers, site, on_layer, fast=fast)
    return ids, out


def checkpointed(chunks: int, folder: Path, key: dict[str, Any], compute_chunk: Callable[[int], dict[str, Any]],
                 progress: bool = True) -> list[dict[str, Any]]:
    """Compute ``chunks`` pieces, saving each as it completes, so an interrupted run resumes where it stopped.

    A saved chunk is reused only if its sidecar carries the same ``key`` (which must name every setting that
    shapes a chunk, the chunk size included); corrupt chunks are recomputed.
    """
    from emolens.cache import CacheError, content_hash, load_tensors, save_tensors

    folder.mkdir(parents=True, exist_ok=True)
    tag = content_hash(key)
    out = []
    bar = _progress(chunks, "chunks", progress and chunks > 1)
    for c in range(chunks):
        path = folder / f"{tag}-chunk{c:05d}.safetensors"
        got = None
        if path.exists():
            try:
                tensors, meta = load_tensors(path)
                if meta.get("key") == tag:
                    got = tensors
            except CacheError:
                got = None
        if got is None:
            got = compute_chunk(c)
            save_tensors(path, got, {"key": tag, "chunk": c})
        out.append(got)
        bar.update(1)
    bar.close()
    return out
