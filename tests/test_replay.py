"""Replayed patching (only what a patch can change is computed) against every patch run in full, on every tiny
architecture; the replay route itself; and the fallbacks when it cannot be trusted."""

from __future__ import annotations

import pytest
import torch

import emolens.replay as replay_mod
from emolens.patching import (
    Metric,
    Patch,
    attribution_patch_resid,
    generic_activation_patch,
    get_act_patch_attn_out,
    get_act_patch_resid_post,
    get_act_patch_resid_post_by_layer,
    logit_diff_metric,
    readout_metric,
    replay_blockers,
    run_metrics,
    run_with_cache,
)

CLEAN = "He took 1000 mg of the medicine while the cat sleeps."
CORRUPT = "He took 8000 mg of the medicine while the cat sleeps."
LONGER = "He took 8000 8000 mg of the medicine while the cat sleeps."


def _metrics(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(spec.d_model, generator=g)
    return {"early": readout_metric(d, layer=1, position=-2),
            "late": readout_metric(d, layer=spec.n_layers - 2, position=-1, measure="dot"),
            "logit_diff": logit_diff_metric([5, 6], 7, position=-1),
            "logit_early": logit_diff_metric(3, 9, position=1)}  # a logit position inside the shared prefix


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = replay_mod.run_blocks

    def run_blocks(*args, **kwargs):
        calls.append(args[3])  # the start block
        return real(*args, **kwargs)
    monkeypatch.setattr(replay_mod, "run_blocks", run_blocks)
    return calls


def _pair(model, corrupt=CORRUPT):
    spec = model.spec
    clean, bad = spec.encode(CLEAN), spec.encode(corrupt)
    first = next(i for i, (a, b) in enumerate(zip(clean, bad)) if a != b)
    return clean, bad, first


def test_replayed_grid_equals_every_patch_run_in_full(tiny_any, counted):
    spec = tiny_any.spec
    clean, bad, first = _pair(tiny_any)
    assert len(clean) == len(bad) and first > 2
    cache = run_with_cache(tiny_any, clean)
    ms = _metrics(spec)
    assert replay_blockers(tiny_any) == []
    positions = list(range(first, len(bad)))
    fast = get_act_patch_resid_post(tiny_any, bad, cache, ms, positions=positions, batch_size=5)
    assert counted and min(counted) >= 1  # it replayed, from above the lowest patched layer
    full = get_act_patch_resid_post(tiny_any, bad, cache, ms, positions=positions, batch_size=5, replay=False)
    assert torch.allclose(fast.values, full.values, atol=1e-4)
    assert torch.allclose(fast.corrupt, full.corrupt)
    # the grid is not trivially flat: some patch moves every metric but the prefix logit
    moved = (full.values - full.corrupt[:, None, None]).abs().flatten(1).amax(1)
    assert (moved[:3] > 1e-3).all() and moved[3] < 1e-5


def test_replay_equals_full_for_directional_by_layer_and_unequal_lengths(tiny_any):
    spec = tiny_any.spec
    clean, bad, _ = _pair(tiny_any, LONGER)
    assert len(bad) != len(clean)
    from emolens.patching import align_pair

    text_a, text_b = CLEAN, LONGER
    pair = align_pair(spec, "p", text_a, text_b, (8, 12), (8, 17))
    cache = run_with_cache(tiny_any, list(pair.clean_ids))
    ms = _metrics(spec)
    basis = torch.randn(2, spec.d_model, generator=torch.Generator().manual_seed(3))
    ids = list(pair.corrupt_ids)
    for kw in ({"basis": basis}, {}):
        a = get_act_patch_resid_post(tiny_any, ids, cache, ms, partner=pair.partner, batch_size=4, **kw)
        b = get_act_patch_resid_post(tiny_any, ids, cache, ms, partner=pair.partner, batch_size=4, replay=False, **kw)
        assert torch.equal(a.values.isnan(), b.values.isnan()) and a.values.isnan().any()
        assert torch.allclose(a.values.nan_to_num(0), b.values.nan_to_num(0), atol=1e-4)
        a = get_act_patch_resid_post_by_layer(tiny_any, ids, cache, ms, partner=pair.partner, **kw)
        b = get_act_patch_resid_post_by_layer(tiny_any, ids, cache, ms, partner=pair.partner, replay=False, **kw)
        assert torch.allclose(a.values, b.values, atol=1e-4)


def test_a_metric_that_reads_every_position_gets_full_logits(tiny_llama):
    spec = tiny_llama.spec
    clean, bad, first = _pair(tiny_llama)
    cache = run_with_cache(tiny_llama, clean)
    seen = []

    def mean_top(logits, resid):
        seen.append(tuple(logits.shape))
        return logits.float().amax(-1).mean(-1)
    ms = {"all": Metric(mean_top)}
    patches = [Patch(layer, (p,)) for layer in range(spec.n_layers) for p in range(first, len(bad))]
    a, _ = generic_activation_patch(tiny_llama, bad, cache, ms, patches, batch_size=3)
    b, _ = generic_activation_patch(tiny_llama, bad, cache, ms, patches, batch_size=3, replay=False)
    assert torch.allclose(a, b, atol=1e-4)
    assert all(s[1] == len(bad) for s in seen)


def test_declared_logit_positions_are_what_the_metric_sees_on_every_path(tiny_llama):
    spec = tiny_llama.spec
    ids = torch.tensor(spec.encode(CLEAN))
    seen = []

    def two(logits, resid):
        seen.append(tuple(logits.shape))
        return logits[:, 1, 3] - logits[:, 0, 3]
    full = run_metrics(tiny_llama.bridge, spec, ids[None], {"m": Metric(lambda lg, r: lg[:, -1, 3] - lg[:, 2, 3])})[0]
    got = run_metrics(tiny_llama.bridge, spec, ids[None], {"m": Metric(two, logit_positions=(2, -1))})[0]
    assert seen == [(1, 2, tiny_llama.bridge.cfg.d_vocab)]
    assert torch.allclose(full, got)


def test_a_replay_that_disagrees_with_the_unpatched_run_falls_back_to_full_runs(tiny_llama, monkeypatch, caplog):
    spec = tiny_llama.spec
    clean, bad, first = _pair(tiny_llama)
    cache = run_with_cache(tiny_llama, clean)
    ms = _metrics(spec)
    want = get_act_patch_resid_post(tiny_llama, bad, cache, ms, positions=list(range(first, len(bad))),
                                    replay=False)
    real = replay_mod.run_blocks
    monkeypatch.setattr(replay_mod, "run_blocks", lambda *a, **k: real(*a, **k) * 1.5)  # a broken route
    with caplog.at_level("WARNING", logger="emolens.patching"):
        got = get_act_patch_resid_post(tiny_llama, bad, cache, ms, positions=list(range(first, len(bad))))
    assert "patching replay off" in caplog.text
    assert torch.allclose(got.values, want.values, atol=1e-5)

    def boom(*a, **k):
        raise NotImplementedError("no such route")
    monkeypatch.setattr(replay_mod, "run_blocks", boom)
    caplog.clear()
    with caplog.at_level("WARNING", logger="emolens.patching"):
        got = get_act_patch_resid_post(tiny_llama, bad, cache, ms, positions=list(range(first, len(bad))))
    assert "NotImplementedError" in caplog.text and torch.allclose(got.values, want.values, atol=1e-5)


def test_sites_inside_blocks_say_why_they_are_not_replayed_and_still_run(tiny_llama):
    spec = tiny_llama.spec
    clean, bad, _ = _pair(tiny_llama)
    assert any("attn_out" in r for r in replay_blockers(tiny_llama, "attn_out"))
    cache = run_with_cache(tiny_llama, clean, sites=("attn_out",))
    grid = get_act_patch_attn_out(tiny_llama, bad, cache, _metrics(spec))
    assert grid.values.shape == (4, spec.n_layers) and torch.isfinite(grid.values).all()


def test_run_blocks_from_the_bottom_reproduces_a_plain_run_and_restores_the_layers(tiny_any):
    bridge, spec = tiny_any
    ids = spec.encode(CLEAN)
    cache = run_with_cache(tiny_any, ids)
    n = 4
    kv = replay_mod.prefix_cache(bridge, spec, ids[:n])
    layers_before = list(bridge.blocks)
    x = cache["blocks.0.hook_resid_post"][n:][None]
    out = replay_mod.run_blocks(bridge, spec, x, 1, spec.n_layers - 1, replay_mod.repeated(kv, 1), n)
    assert torch.allclose(out[0].float(), cache[f"blocks.{spec.n_layers - 1}.hook_resid_post"][n:], atol=1e-4)
    assert list(bridge.blocks) == layers_before
    assert replay_mod._layer_list_holder(bridge) is not None  # the HF list is the blocks again
    with pytest.raises(ValueError, match="start <= stop"):
        replay_mod.run_blocks(bridge, spec, x, 2, 1, None, 0)
    with pytest.raises(ValueError, match="cache exactly when"):
        replay_mod.run_blocks(bridge, spec, x, 1, 2, None, n)


def test_attribution_is_unchanged_by_declared_logit_positions(tiny_llama):
    clean, bad, _ = _pair(tiny_llama)
    cache = run_with_cache(tiny_llama, clean)
    lm = {"m": Metric(lambda lg, r: torch.log_softmax(lg[:, -1].float(), -1)[:, 5]
                      - torch.log_softmax(lg[:, -1].float(), -1)[:, 7])}
    a = attribution_patch_resid(tiny_llama, bad, cache, lm)
    b = attribution_patch_resid(tiny_llama, bad, cache, {"m": logit_diff_metric(5, 7)})
    assert torch.allclose(a.values.nan_to_num(0), b.values.nan_to_num(0), atol=1e-5)
