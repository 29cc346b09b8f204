"""The block-level fast path: same residuals as the bridge, module tree restored, refuses when unsafe."""

from __future__ import annotations

import pytest
import torch

from emolens.activations import Pooling, neutral_statistics, pooled_means, token_residuals
from emolens.fastpath import fast_path_blockers, hf_internals, maybe_hf_internals


def _tree(bridge):
    return [(name, id(m)) for name, m in bridge.named_modules()]


def test_fast_equals_bridge_residuals(tiny_any, sample_texts):
    bridge, spec = tiny_any
    for text in sample_texts[:3]:
        _, slow = token_residuals(bridge, spec, text, fast=False)
        _, fast = token_residuals(bridge, spec, text, fast=True)
        assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def test_neutral_statistics_fast_equals_slow(tiny_gemma, sample_texts):
    bridge, spec = tiny_gemma
    a = neutral_statistics(bridge, spec, sample_texts, fast=True, progress=False)
    b = neutral_statistics(bridge, spec, sample_texts, fast=False, progress=False)
    assert torch.allclose(a["cov"], b["cov"], atol=1e-6) and torch.allclose(a["mean"], b["mean"], atol=1e-6)


def test_module_tree_and_attention_setting_restored(tiny_any):
    bridge, spec = tiny_any
    before, impl = _tree(bridge), bridge.original_model.config._attn_implementation
    with hf_internals(bridge):
        inside = _tree(bridge)
        assert inside != before  # the inner wrappers really are out of the way
        assert not any("LinearBridge" in type(m).__name__ for m in bridge.blocks[0].original_component.modules())
    assert _tree(bridge) == before and bridge.original_model.config._attn_implementation == impl
    with pytest.raises(ValueError):
        with hf_internals(bridge):
            raise ValueError("boom")
    assert _tree(bridge) == before and bridge.original_model.config._attn_implementation == impl


def test_block_hooks_still_fire_inside(tiny_llama):
    bridge, spec = tiny_llama
    ids = torch.tensor([spec.encode("The fox sleeps by the stove.")])
    seen = []
    with hf_internals(bridge):
        bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: seen.append("pre")),
                                              ("blocks.1.hook_resid_post", lambda x, hook: seen.append("post"))])
    assert seen == ["pre", "post"]


def test_inner_hook_blocks_fast_path_and_is_respected(tiny_llama, sample_texts):
    bridge, spec = tiny_llama
    assert fast_path_blockers(bridge) == []
    layers = [spec.n_layers - 1]
    clean, _ = pooled_means(bridge, spec, sample_texts, layers, Pooling(start=2), progress=False)
    bridge.blocks[0].attn.hook_z.add_hook(lambda z, hook: z * 0)  # zero layer 0's attention heads
    try:
        reasons = fast_path_blockers(bridge)
        assert reasons and "blocks.0.attn.hook_z" in reasons[0]
        with pytest.raises(RuntimeError, match="inside blocks"):
            with hf_internals(bridge):
                pass
        # the engine falls back to the bridge's own path, so the ablation still applies
        ablated, _ = pooled_means(bridge, spec, sample_texts, layers, Pooling(start=2), progress=False, fast=True)
        slow, _ = pooled_means(bridge, spec, sample_texts, layers, Pooling(start=2), progress=False, fast=False)
        assert torch.allclose(ablated, slow, atol=1e-6)
        assert not torch.allclose(ablated, clean, atol=1e-3)
    finally:
        bridge.reset_hooks()
    assert fast_path_blockers(bridge) == []


def test_processed_weights_block_fast_path(tiny_llama, monkeypatch):
    bridge, _ = tiny_llama
    monkeypatch.setattr(bridge, "compatibility_mode", True, raising=False)
    assert any("compatibility" in r for r in fast_path_blockers(bridge))
    with maybe_hf_internals(bridge) as on:  # a no-op, not an error
        assert on is False
    monkeypatch.setattr(bridge, "compatibility_mode", False, raising=False)
    with maybe_hf_internals(bridge) as on:
        assert on is True


def test_resid_pre_fast_equals_slow(tiny_any, sample_texts):
    bridge, spec = tiny_any
    layers = [0, spec.n_layers - 1]
    a, _ = pooled_means(bridge, spec, sample_texts, layers, Pooling(start=2), site="resid_pre", progress=False)
    b, _ = pooled_means(bridge, spec, sample_texts, layers, Pooling(start=2), site="resid_pre", progress=False,
                        fast=False)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[:, 0], a[:, 1])  # resid_pre of layer 0 is the embedding: really a different site
