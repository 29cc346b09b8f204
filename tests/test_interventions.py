"""Steering and ablation: identities, effects, and no hook left behind."""

from __future__ import annotations

import pytest
import torch

from emolens.interventions import ablation, residual_norm, steering


def logits(bridge, spec, text="The fox sleeps by the warm stove."):
    return bridge(torch.tensor([spec.encode(text)]))


def test_alpha_zero_is_identity(tiny_any):
    bridge, spec = tiny_any
    base = logits(bridge, spec)
    with steering(bridge, spec, torch.randn(spec.d_model), [0, 1], 0.0, norm=10.0):
        same = logits(bridge, spec)
    assert torch.equal(base, same)


def test_steering_changes_output_and_cleans_up(tiny_llama):
    bridge, spec = tiny_llama
    base = logits(bridge, spec)
    with steering(bridge, spec, torch.randn(spec.d_model), 1, 2.0, norm=10.0):
        moved = logits(bridge, spec)
    assert not torch.allclose(base, moved)
    assert torch.equal(logits(bridge, spec), base)  # hooks removed on exit


def test_hooks_removed_after_exception(tiny_llama):
    bridge, spec = tiny_llama
    base = logits(bridge, spec)
    with pytest.raises(RuntimeError):
        with steering(bridge, spec, torch.randn(spec.d_model), 1, 5.0, norm=10.0):
            raise RuntimeError("boom")
    assert torch.equal(logits(bridge, spec), base)


def test_steering_adds_exactly_alpha_norm_unit(tiny_llama):
    bridge, spec = tiny_llama
    captured = {}

    def grab(resid, hook):
        captured.setdefault(len(captured), resid.clone())
        return resid

    d = torch.randn(spec.d_model)
    ids = torch.tensor([spec.encode("Hello fox.")])
    with steering(bridge, spec, d, 1, 0.3, norm=7.0):
        bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_post", grab)])
    bridge.run_with_hooks(ids, fwd_hooks=[("blocks.1.hook_resid_post", grab)])
    diff = captured[0] - captured[1]
    assert torch.allclose(diff, (0.3 * 7.0 * d / d.norm()).expand_as(diff), atol=1e-5)


def test_ablation_removes_component(tiny_llama):
    bridge, spec = tiny_llama
    d = torch.randn(spec.d_model)
    seen = {}

    def grab(resid, hook):
        seen["r"] = resid.clone()
        return resid

    with ablation(bridge, spec, d, 1):
        bridge.run_with_hooks(torch.tensor([spec.encode("Hello fox.")]), fwd_hooks=[("blocks.1.hook_resid_post", grab)])
    assert (seen["r"] @ (d / d.norm())).abs().max() < 1e-4


def test_bad_direction_shape(tiny_llama):
    bridge, spec = tiny_llama
    with pytest.raises(ValueError, match="expected"):
        with steering(bridge, spec, torch.randn(3), 1, 0.1, norm=1.0):
            pass


def test_residual_norm_is_the_median_over_ordinary_tokens(tiny_llama):
    from emolens.activations import pool_positions, special_ids, token_residuals

    bridge, spec = tiny_llama
    texts = ["The fox sleeps by the stove.", "A much longer sentence about the fox and the stove and the cat."]
    want = []
    for t in texts:  # the obvious loop: every token's norm except position 0 and special tokens
        ids, res = token_residuals(bridge, spec, t, [1])
        want += [float(res[p, 0].norm()) for p in pool_positions(ids, special_ids(spec))]
    assert residual_norm(bridge, spec, texts, 1) == pytest.approx(float(torch.tensor(want).median()), rel=1e-5)


@pytest.mark.parametrize("where", ["all", "inside_prompt", "during_reply", "never"])
def test_cached_generation_equals_uncached_with_steering(tiny_any, where):
    """The fast KV-cached decoder gives the uncached decoder's tokens, steered or not, from any position."""
    from emolens.generate import complete

    bridge, spec = tiny_any
    prompt = "The fox sleeps by the warm stove and"
    n = len(spec.encode(prompt))
    from_position = {"all": 0, "inside_prompt": n // 2, "during_reply": n + 4, "never": 10_000}[where]
    plain = [complete(bridge, spec, prompt, max_new_tokens=12, fast=f) for f in (True, False)]
    assert plain[0] == plain[1]
    direction = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(1))
    norm = residual_norm(bridge, spec, [prompt], 1)
    outs = []
    for fast in (True, False):
        with steering(bridge, spec, direction, 1, 3.0, norm=norm, from_position=from_position):
            outs.append(complete(bridge, spec, prompt, max_new_tokens=12, fast=fast))
    assert outs[0] == outs[1]
    if from_position == 0:
        assert outs[0] != plain[0]  # the steer is strong enough to matter, so the equality above means something
    if from_position == 10_000:
        assert outs[0] == plain[0]
