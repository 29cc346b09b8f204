"""The extraction engine against a slow, obvious loop; invariances; pooling rules; resume and cache."""

from __future__ import annotations

import pytest
import torch

from emolens.activations import (
    Pooling,
    length_batches,
    neutral_statistics,
    pool_positions,
    pooled_means,
    special_ids,
    token_residuals,
)


def slow_pooled_means(bridge, spec, texts, layers, start):
    """One text at a time through the bridge's own run_with_cache, positions chosen by hand: the reference."""
    specials = special_ids(spec)
    out = torch.zeros((len(texts), len(layers), spec.d_model))
    for i, t in enumerate(texts):
        ids = spec.encode(t)
        _, cache = bridge.run_with_cache(torch.tensor([ids]))
        res = torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0].float() for layer in layers], dim=1)
        keep, own = [], 0
        for pos, tok in enumerate(ids):
            if tok in specials:
                continue
            if pos > 0 and own >= start:
                keep.append(pos)
            own += 1
        if keep:
            out[i] = res[keep].mean(0)
    return out


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 5])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_equals_reference(tiny_any, sample_texts, batch_size, padding_side, fast):
    bridge, spec = tiny_any
    layers = [0, 2, spec.n_layers - 1]
    ref = slow_pooled_means(bridge, spec, sample_texts, layers, start=3)
    got, counts = pooled_means(bridge, spec, sample_texts, layers, Pooling(start=3), batch_size=batch_size,
                               padding_side=padding_side, progress=False, fast=fast)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert (counts > 0).all()


def test_token_residuals_match_single_run(tiny_llama):
    bridge, spec = tiny_llama
    ids, res = token_residuals(bridge, spec, "The fox sleeps by the stove.", [1])
    _, cache = bridge.run_with_cache(torch.tensor([ids]))
    assert torch.allclose(res[:, 0], cache["blocks.1.hook_resid_post"][0].float(), atol=1e-6)


def test_first_position_and_specials_never_pooled(tiny_llama):
    bridge, spec = tiny_llama
    text = spec.format_chat([{"role": "user", "content": "Hello there, how are you?"}], add_generation_prompt=True)
    ids = spec.encode(text)
    pos = pool_positions(ids, special_ids(spec), start=0)
    assert 0 not in pos
    assert all(ids[p] not in special_ids(spec) for p in pos)
    # without any BOS, position 0 is an own token: counted for the window but still excluded
    assert pool_positions([5, 6, 7], set(), start=0) == [1, 2]
    assert pool_positions([1, 5, 6, 7], {1}, start=1) == [2, 3]


def test_massive_first_position_does_not_leak_into_pool(tiny_llama, sample_texts):
    """Blow up position 0's residual: pooled means must not move."""
    bridge, spec = tiny_llama

    def boost(resid, hook):
        resid = resid.clone()
        resid[:, 0] *= 1e4
        return resid

    base, _ = pooled_means(bridge, spec, sample_texts, [1], Pooling(start=0), progress=False)
    with bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_post", boost)]):
        boosted, _ = pooled_means(bridge, spec, sample_texts, [1], Pooling(start=0), padding_side="right",
                                  progress=False)
    assert torch.allclose(base, boosted, atol=1e-5)


def test_short_texts_warn_and_count_zero(tiny_llama):
    bridge, spec = tiny_llama
    with pytest.warns(UserWarning, match="no token in the pooling window"):
        means, counts = pooled_means(bridge, spec, ["Tiny.", "A much longer text " * 20], [0], Pooling(start=30),
                                     progress=False)
    assert counts[0] == 0 and counts[1] > 0
    assert torch.isnan(means[0]).all() and torch.isfinite(means[1]).all()  # never a zero row read as data


def test_pooling_end_and_validation():
    assert pool_positions(list(range(10, 20)), set(), start=2, end=5) == [2, 3, 4]
    with pytest.raises(ValueError, match="empty"):
        Pooling(start=5, end=5)
    with pytest.raises(ValueError, match="weighting"):
        Pooling(weighting="median")


def test_layer_errors(tiny_llama, sample_texts):
    bridge, spec = tiny_llama
    from emolens.models import ModelError

    with pytest.raises(ModelError, match="allowed 0..3"):
        pooled_means(bridge, spec, sample_texts, [7], progress=False)


def test_length_batches_cover_everything():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [lengths[i] for i in batches[0]] == [9, 7, 5]


def test_neutral_statistics_equal_explicit_covariance(tiny_gemma, sample_texts):
    bridge, spec = tiny_gemma
    st = neutral_statistics(bridge, spec, sample_texts, [1, 3], batch_size=2, progress=False)
    rows = []
    for t in sample_texts:
        ids, res = token_residuals(bridge, spec, t, [1, 3])
        pos = pool_positions(ids, special_ids(spec))
        rows.append(res[pos].double())
    x = torch.cat(rows)  # [N, 2, d]
    assert st["n_tokens"] == x.shape[0]
    for j in range(2):
        cov = torch.cov(x[:, j].T)
        assert torch.allclose(st["cov"][j], cov, atol=1e-6 * cov.abs().max())
        assert torch.allclose(st["mean"][j], x[:, j].mean(0), atol=1e-8)


@pytest.mark.parametrize("fast", [True, False])
def test_forward_stops_after_deepest_layer(tiny_any, sample_texts, fast):
    """Neither the final norm nor the unembedding runs, even when the last block is asked for; nor any block
    after the deepest requested one."""
    bridge, spec = tiny_any
    ran = []
    handles = [bridge.unembed.original_component.register_forward_hook(lambda *a: ran.append("unembed")),
               bridge.ln_final.original_component.register_forward_hook(lambda *a: ran.append("ln_final")),
               bridge.blocks[2].original_component.register_forward_hook(lambda *a: ran.append("block2"))]
    try:
        pooled_means(bridge, spec, sample_texts[:2], [spec.n_layers - 1], Pooling(start=0), progress=False, fast=fast)
        assert ran.count("block2") == 1 and "unembed" not in ran and "ln_final" not in ran, ran
        ran.clear()
        pooled_means(bridge, spec, sample_texts[:2], [0, 1], Pooling(start=0), progress=False, fast=fast)
        assert ran == [], ran
    finally:
        for h in handles:
            h.remove()
    # the bridge is left clean: a normal full forward still returns logits
    assert bridge(torch.tensor([spec.encode("A fox.")])).shape[-1] == bridge.cfg.d_vocab
