"""Block-level fast path: TransformerLens hooks between blocks, Hugging Face speed inside them.

The TransformerLens 4.x bridge wraps every submodule of every block (attention, MLP, norms, each linear) in a
component with hook points, and re-implements attention step by step (eager softmax, never SDPA) so that
``hook_pattern`` and friends can fire. Extraction only reads the residual stream between blocks, so that work
buys nothing there: on the default model it made extraction ~30% slower than a plain HF forward.

``hf_internals(bridge)`` temporarily puts the original HF modules back inside each block (and SDPA attention
where the model supports it). The blocks themselves stay bridge components, so ``blocks.L.hook_resid_pre`` /
``hook_resid_post`` hooks, ``run_with_hooks`` and ``stop_at_layer`` behave exactly as before. Everything is
restored on exit, also on errors.

It refuses (``fast_path_blockers`` says why) when skipping the inner wrappers would change a result: a hook
is attached to a hook point inside a block, or the bridge runs processed weights / compatibility mode (those
live in the wrappers' view of the weights, not in the HF modules). Tests check fast == slow on every tiny
architecture, both padding sides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _is_component(module: Any) -> bool:
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    return isinstance(module, GeneralizedComponent)


def _hooked_inner_points(bridge: TransformerBridge) -> list[str]:
    """Names of hook points inside blocks that carry hooks (each block's own input/output hooks excluded)."""
    from transformer_lens.hook_points import HookPoint

    inner: dict[int, str] = {}
    for b, block in enumerate(bridge.blocks):
        own = {id(getattr(block, "hook_in", None)), id(getattr(block, "hook_out", None))}
        for name, mod in block.named_modules():
            if isinstance(mod, HookPoint) and id(mod) not in own and (mod.fwd_hooks or mod.bwd_hooks):
                inner[id(mod)] = f"blocks.{b}.{name}"
    if not inner:
        return []
    # Prefer the bridge's public names (aliases included) over module paths.
    public = [n for n, hp in getattr(bridge, "hook_dict", {}).items() if id(hp) in inner]
    return public or list(inner.values())


def fast_path_blockers(bridge: TransformerBridge) -> list[str]:
    """Reasons the fast path would not give the bridge's own results; empty when it is safe."""
    reasons = []
    if not hasattr(bridge, "blocks") or not len(bridge.blocks):
        return ["the bridge has no blocks"]
    if any(getattr(block, "original_component", None) is None for block in bridge.blocks):
        reasons.append("a block has no original HF module")
    if getattr(bridge, "compatibility_mode", False) or getattr(bridge, "_weights_processed", False):
        reasons.append("processed weights / compatibility mode are on")
    hooked = _hooked_inner_points(bridge)
    if hooked:
        reasons.append(f"hooks are attached inside blocks ({', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''})")
    return reasons


def _unwrap(module: Any, swaps: list[tuple[Any, str, Any]]) -> None:
    """Replace every bridge component below ``module`` by its original HF module, recording each swap."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if _is_component(child) and child.original_component is not None:
            swaps.append((module, name, child))
            module._modules[name] = child.original_component
            _unwrap(child.original_component, swaps)
        else:
            _unwrap(child, swaps)


@contextlib.contextmanager
def _swapped(bridge: TransformerBridge, sdpa: bool) -> Iterator[bool]:
    swaps: list[tuple[Any, str, Any]] = []
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    old_impl = getattr(config, "_attn_implementation", None)
    use_sdpa = sdpa and old_impl is not None and getattr(bridge.original_model, "_supports_sdpa", False)
    try:
        for block in bridge.blocks:
            _unwrap(block.original_component, swaps)
        if use_sdpa:
            config._attn_implementation = "sdpa"
        yield True
    finally:
        if use_sdpa:
            config._attn_implementation = old_impl
        for parent, name, child in reversed(swaps):
            parent._modules[name] = child


def hf_internals(bridge: TransformerBridge, sdpa: bool = True) -> contextlib.AbstractContextManager[bool]:
    """Run blocks' insides as plain HF modules for the duration; block-level hooks keep firing.

    Raises ``RuntimeError`` if ``fast_path_blockers`` finds a reason the results would differ.
    """
    reasons = fast_path_blockers(bridge)
    if reasons:
        raise RuntimeError("block-level fast path not allowed: " + "; ".join(reasons))
    return _swapped(bridge, sdpa)


def maybe_hf_internals(bridge: TransformerBridge, enabled: bool = True) -> contextlib.AbstractContextManager[bool]:
    """``hf_internals`` when enabled and safe, else a no-op (the bridge's own, slower path). Entering it gives
    whether the fast path is on."""
    if enabled and not fast_path_blockers(bridge):
        return _swapped(bridge, sdpa=True)
    return contextlib.nullcontext(False)
