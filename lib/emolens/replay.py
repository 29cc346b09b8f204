"""Running part of a forward again: a key/value cache for a shared prefix, and a start at a later block.

Patching, steering on a suffix and forced-choice scoring all re-run one prompt many times with a change at
some layer and some positions. Nothing before the first changed position can differ (the mask is causal), and
nothing below the first changed layer can differ either. :func:`run_blocks` computes only what can: it takes
the residual entering block ``start`` for the suffix positions, the prefix's keys and values from a cache, and
runs blocks ``start..stop`` on the suffix alone.

How, on the TransformerLens 4 bridge: inside :func:`emolens.fastpath.hf_internals` the blocks' attention is
Hugging Face's own, which reads and extends the cache it is handed (under ``cache`` in transformers 5,
``past_key_values`` before). The bridge's ``start_at_layer`` swaps the given residual in at block ``start``
but still runs the blocks below it, so for the duration of the run the HF model's list of layers (the very
``ModuleList`` that is ``bridge.blocks``) is replaced by its tail from ``start``; each layer keeps its own
``layer_idx``, so it reads its own slot of the cache. :func:`block_skip_blockers` says when that is not
possible, and callers then run in full.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cache_keyword(bridge: Any) -> str | None:
    """The name under which the bridge's HF model takes a key/value cache, or None if it takes none."""
    hf = getattr(bridge, "original_model", None)
    try:
        params = inspect.signature(hf.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def final_logits(bridge: Any, resid: torch.Tensor) -> torch.Tensor:
    """Final norm and unembedding of residuals ``[b, d]`` (one position per row): float32 logits on the CPU."""
    import torch

    with torch.inference_mode():
        return bridge.unembed(bridge.ln_final(resid[:, None]))[:, 0].float().cpu()


def _layer_list_holder(bridge: Any) -> tuple[Any, str] | None:
    """The HF module and attribute name whose ``ModuleList`` is ``bridge.blocks`` (the list HF loops over)."""
    blocks = getattr(bridge, "blocks", None)
    hf = getattr(bridge, "original_model", None)
    if blocks is None or hf is None:
        return None
    for module in hf.modules():
        for name, child in module._modules.items():
            if child is blocks:
                return module, name
    return None


def block_skip_blockers(bridge: Any) -> list[str]:
    """Why :func:`run_blocks` cannot run here (empty when it can)."""
    from emolens.fastpath import fast_path_blockers

    reasons = [f"the block-level fast path is off ({r})" for r in fast_path_blockers(bridge)]
    if cache_keyword(bridge) is None:
        reasons.append("the HF model's forward takes no key/value cache")
    if _layer_list_holder(bridge) is None:
        reasons.append("the HF model's list of layers is not the bridge's blocks")
    return reasons


@contextlib.contextmanager
def _tail_layers(bridge: Any, start: int) -> Iterator[None]:
    """For the duration, the HF model loops over blocks ``start..`` only (restored on exit and on error)."""
    import torch

    found = _layer_list_holder(bridge)
    if found is None:
        raise RuntimeError("the HF model's list of layers is not the bridge's blocks; cannot skip blocks")
    holder, name = found
    full = holder._modules[name]
    holder._modules[name] = torch.nn.ModuleList(list(full)[start:])
    try:
        yield
    finally:
        holder._modules[name] = full


def run_blocks(bridge: Any, spec: Any, resid: torch.Tensor, start: int, stop: int, cache: Any | None,
               n_prefix: int, fwd_hooks: Sequence[tuple[str, Any]] = ()) -> torch.Tensor:
    """Blocks ``start..stop`` (inclusive) on ``resid [b, S, d]``, the residual entering block ``start`` at
    positions ``n_prefix..n_prefix+S-1``, with the prefix's keys and values in ``cache`` (a cache of
    ``n_prefix`` tokens for batch ``b``, which the run extends; None when ``n_prefix`` is 0). Returns block
    ``stop``'s output ``[b, S, d]``. ``fwd_hooks`` (block-level hooks) address suffix positions."""
    import torch
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    from emolens.activations import hook_name
    from emolens.fastpath import hf_internals

    if not 0 <= start <= stop < spec.n_layers:
        raise ValueError(f"need 0 <= start <= stop < {spec.n_layers}, got start {start}, stop {stop}")
    if (cache is None) != (n_prefix == 0):
        raise ValueError("give a cache exactly when there is a prefix (n_prefix > 0)")
    grabbed: list[torch.Tensor] = []

    def grab(x: torch.Tensor, hook: Any) -> None:
        grabbed.append(x)
        raise StopAtLayerException(x)

    b, S, _ = resid.shape
    dev = spec.device
    kwargs: dict[str, Any] = {"attention_mask": torch.ones((b, n_prefix + S), dtype=torch.long, device=dev),
                              "position_ids": (n_prefix + torch.arange(S, device=dev)).expand(b, S)}
    if cache is not None:
        kwargs[cache_keyword(bridge) or "past_key_values"] = cache
    hooks = list(fwd_hooks) + [(hook_name(stop), grab)]
    with torch.inference_mode(), hf_internals(bridge), _tail_layers(bridge, start):  # strict: see the module doc
        bridge.run_with_hooks(resid.to(dev), fwd_hooks=hooks, return_type=None, start_at_layer=start,
                              stop_at_layer=stop + 1, **kwargs)
    if not grabbed:
        raise RuntimeError(f"block {stop} never ran: the HF model did not loop over the bridge's blocks")
    return grabbed[0]


def last_block_output(bridge: Any, spec: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                      cache: Any) -> torch.Tensor:
    """Residual ``[b, T, d]`` after the last block for token ids ``ids`` continuing ``cache`` (which the run
    extends), stopped there: the final norm and unembedding never run."""
    import torch
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    from emolens.activations import hook_name
    from emolens.fastpath import hf_internals

    last = spec.n_layers - 1
    grabbed: list[torch.Tensor] = []

    def stop(resid: torch.Tensor, hook: Any) -> None:
        grabbed.append(resid)
        raise StopAtLayerException(resid)

    dev = spec.device
    with torch.inference_mode(), hf_internals(bridge):  # strict: never the slow path, which ignores the cache
        bridge.run_with_hooks(ids.to(dev), fwd_hooks=[(hook_name(last), stop)], attention_mask=mask.to(dev),
                              position_ids=positions.to(dev), return_type=None, stop_at_layer=last + 1,
                              **{cache_keyword(bridge) or "past_key_values": cache})
    return grabbed[0]


def prefix_cache(bridge: Any, spec: Any, prefix: Sequence[int]) -> Any:
    """The key/value cache of token ids ``prefix`` (batch 1) at every layer, checked to hold all of it."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=bridge.original_model.config)  # the config gives sliding-window layers their type
    ids = torch.tensor([list(prefix)], dtype=torch.long)
    last_block_output(bridge, spec, ids, torch.ones_like(ids), torch.arange(len(prefix))[None], cache)
    held = {cache.get_seq_length(k) for k in range(len(cache.layers))}
    if held != {len(prefix)}:
        raise RuntimeError(f"the prefix run left {sorted(held)} tokens in the cache, not {len(prefix)}")
    return cache


def repeated(cache: Any, b: int) -> Any:
    """A copy of a batch-1 ``cache`` repeated to ``b`` rows (each run appends to the cache it is given)."""
    out = copy.deepcopy(cache)
    out.batch_repeat_interleave(b)
    return out
