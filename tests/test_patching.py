"""Activation patching, attribution patching and ablation on tiny random models: invariants that can fail."""

from __future__ import annotations

import pytest
import torch

from emolens.interventions import ablation
from emolens.patching import (
    Patch,
    PatchingError,
    ablation_by_layer,
    align_pair,
    align_tokens,
    alignment_report,
    attribution_patch_resid,
    char_to_token_span,
    clean_metric_values,
    edit_span,
    generic_activation_patch,
    get_act_patch_attn_out,
    get_act_patch_mlp_out,
    get_act_patch_resid_post,
    get_act_patch_resid_post_by_layer,
    logit_diff_metric,
    random_subspace,
    readout_metric,
    run_metrics,
    run_with_cache,
    subspace_means,
)

CLEAN = "He took 1000 mg of the medicine while the cat sleeps."
CORRUPT = "He took 8000 mg of the medicine while the cat sleeps."


def _ids(model, text):
    return torch.tensor(model.spec.encode(text))


def _metrics(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(model.spec.d_model, generator=g)
    return {"readout": readout_metric(d, layer=model.spec.n_layers - 2, position=-1),
            "logit_diff": logit_diff_metric(5, 7, position=-1)}


def test_clean_into_clean_is_identity(tiny_llama):
    ids = _ids(tiny_llama, CLEAN)
    cache = run_with_cache(tiny_llama, ids)
    ms = _metrics(tiny_llama)
    grid = get_act_patch_resid_post(tiny_llama, ids, cache, ms)
    base = clean_metric_values(tiny_llama, ids, ms)
    assert grid.values.shape == (2, tiny_llama.spec.n_layers, len(ids))
    assert torch.allclose(grid.values, base[:, None, None].expand_as(grid.values), atol=1e-5)


@pytest.mark.parametrize("arch_fixture", ["tiny_llama", "tiny_gemma"])
def test_every_position_at_a_layer_reproduces_the_source_run(arch_fixture, request):
    model = request.getfixturevalue(arch_fixture)
    clean, corrupt = _ids(model, CLEAN), _ids(model, CORRUPT)
    assert len(clean) == len(corrupt)
    ms = _metrics(model)
    cache = run_with_cache(model, clean)
    target = clean_metric_values(model, clean, ms)
    before = clean_metric_values(model, corrupt, ms)
    assert not torch.allclose(target, before, atol=1e-4), "the pair must differ for the test to mean anything"
    grid = get_act_patch_resid_post_by_layer(model, corrupt, cache, ms, layers=[0, 1, 2])
    for j in range(3):  # layers at or below the read layer: downstream is the clean run exactly
        assert torch.allclose(grid.values[:, j], target, atol=1e-4)


def test_batched_equals_one_at_a_time(tiny_llama):
    clean, corrupt = _ids(tiny_llama, CLEAN), _ids(tiny_llama, CORRUPT)
    cache = run_with_cache(tiny_llama, clean)
    ms = _metrics(tiny_llama)
    a = get_act_patch_resid_post(tiny_llama, corrupt, cache, ms, batch_size=64)
    b = get_act_patch_resid_post(tiny_llama, corrupt, cache, ms, batch_size=1)
    assert torch.allclose(a.values, b.values, atol=1e-5)
    # and the skipped shared prefix holds exactly the unpatched value
    first = next(i for i in range(len(clean)) if clean[i] != corrupt[i])
    assert torch.allclose(a.values[:, :, :first], a.corrupt[:, None, None].expand(-1, a.values.shape[1], first))
    assert not torch.allclose(a.values[:, 0, first], a.corrupt)


def test_attribution_equals_exact_when_the_metric_is_linear_in_the_patch(tiny_llama):
    # metric read at the patched layer itself: a dot product with the residual, linear in the patched value
    clean, corrupt = _ids(tiny_llama, CLEAN), _ids(tiny_llama, CORRUPT)
    cache = run_with_cache(tiny_llama, clean)
    d = torch.randn(tiny_llama.spec.d_model, generator=torch.Generator().manual_seed(3))
    m = {"dot": readout_metric(d, layer=1, position=-1, measure="dot")}
    exact = get_act_patch_resid_post(tiny_llama, corrupt, cache, m, layers=[1])
    approx = attribution_patch_resid(tiny_llama, corrupt, cache, m, layers=[1])
    assert torch.allclose(exact.values, approx.values, atol=1e-4)


def test_attribution_matches_exact_to_first_order(tiny_llama):
    ids = _ids(tiny_llama, CORRUPT)
    base = run_with_cache(tiny_llama, ids)
    g = torch.Generator().manual_seed(1)
    eps = 1e-3
    # a "clean" cache that is the corrupted one plus a small step: the nonlinear metric is then linear to O(eps^2)
    clean = {k: v + eps * v.norm(dim=-1, keepdim=True) * torch.randn(v.shape, generator=g) / v.shape[-1] ** 0.5
             for k, v in base.items()}
    ms = {"logit_diff": logit_diff_metric(5, 7, position=-1)}
    exact = get_act_patch_resid_post(tiny_llama, ids, clean, ms, layers=[0, 2])
    approx = attribution_patch_resid(tiny_llama, ids, clean, ms, layers=[0, 2])
    de, da = exact.values - exact.corrupt[:, None, None], approx.values - approx.corrupt[:, None, None]
    scale = de.abs().max()
    assert scale > 1e-6
    assert (de - da).abs().max() < 0.05 * scale
    assert torch.corrcoef(torch.stack([de.flatten(), da.flatten()]))[0, 1] > 0.99


def test_directional_patching_along_the_full_basis_is_full_patching(tiny_llama):
    clean, corrupt = _ids(tiny_llama, CLEAN), _ids(tiny_llama, CORRUPT)
    cache = run_with_cache(tiny_llama, clean)
    ms = _metrics(tiny_llama)
    full = get_act_patch_resid_post(tiny_llama, corrupt, cache, ms, layers=[1, 2])
    basis = random_subspace(tiny_llama.spec.d_model, tiny_llama.spec.d_model, seed=4)
    along = get_act_patch_resid_post(tiny_llama, corrupt, cache, ms, layers=[1, 2], basis=basis)
    assert torch.allclose(full.values, along.values, atol=1e-4)
    one = get_act_patch_resid_post(tiny_llama, corrupt, cache, ms, layers=[1, 2], basis=basis[:1])
    assert not torch.allclose(full.values, one.values, atol=1e-4)


def test_attn_and_mlp_patches_of_a_pair_with_itself_change_nothing(tiny_llama):
    ids = _ids(tiny_llama, CLEAN)
    cache = run_with_cache(tiny_llama, ids, sites=("attn_out", "mlp_out"))
    ms = _metrics(tiny_llama)
    base = clean_metric_values(tiny_llama, ids, ms)
    for fn in (get_act_patch_attn_out, get_act_patch_mlp_out):
        grid = fn(tiny_llama, ids, cache, ms)
        assert grid.values.shape == (2, tiny_llama.spec.n_layers)
        assert torch.allclose(grid.values, base[:, None].expand_as(grid.values), atol=1e-5)


def test_attn_patch_of_every_position_moves_toward_clean(tiny_llama):
    clean, corrupt = _ids(tiny_llama, CLEAN), _ids(tiny_llama, CORRUPT)
    cache = run_with_cache(tiny_llama, clean, sites=("attn_out",))
    ms = _metrics(tiny_llama)
    grid = get_act_patch_attn_out(tiny_llama, corrupt, cache, ms, layers=[0])
    assert not torch.allclose(grid.values[:, 0], grid.corrupt, atol=1e-6)


def test_ablating_a_direction_zeroes_its_readout_at_that_layer(tiny_any):
    bridge, spec = tiny_any
    ids = _ids(tiny_any, CLEAN)[None]
    d = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(5))
    m = {"r": Metric_all_positions(d, 1)}
    before, _ = run_metrics(bridge, spec, ids, m)
    assert before.abs().max() > 1e-3
    with ablation(bridge, spec, d, 1):
        after, _ = run_metrics(bridge, spec, ids, m)
    assert after.abs().max() < 1e-4
    with ablation_by_layer(bridge, spec, {1: torch.stack([d, torch.randn(spec.d_model)])}):
        after2, _ = run_metrics(bridge, spec, ids, m)
    assert after2.abs().max() < 1e-4
    again, _ = run_metrics(bridge, spec, ids, m)
    assert torch.allclose(again, before)


def Metric_all_positions(d, layer):
    """Largest |dot| with unit ``d`` over the positions after the first (a metric of the whole run)."""
    from emolens.patching import Metric

    u = d / d.norm()
    return Metric(lambda logits, resid: (resid[layer][:, 1:].float() @ u).abs().amax(-1), (layer,), False)


def test_mean_ablation_holds_the_mean(tiny_llama):
    bridge, spec = tiny_llama
    d = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(6))
    means = subspace_means(tiny_llama, [CLEAN, CORRUPT], {1: d})
    u = d / d.norm()
    ids = _ids(tiny_llama, CLEAN)[None]
    from emolens.patching import Metric

    m = {"r": Metric(lambda lg, r: r[1][:, 1:].float() @ u, (1,), False)}
    with ablation_by_layer(bridge, spec, {1: d}, means=means):
        vals, _ = run_metrics(bridge, spec, ids, {"r": readout_metric(d, 1, 3, measure="dot")})
    assert abs(float(vals[0, 0]) - float(means[1][0])) < 1e-4
    assert m  # the lambda above documents the per-position reading


def test_hooks_are_gone_after_an_exception(tiny_llama):
    bridge, spec = tiny_llama
    ids = _ids(tiny_llama, CLEAN)
    cache = run_with_cache(tiny_llama, ids)

    def boom(logits, resid):
        raise RuntimeError("metric failed")

    from emolens.patching import Metric

    with pytest.raises(RuntimeError, match="metric failed"):
        generic_activation_patch(tiny_llama, ids, {k: v + 1 for k, v in cache.items()}, {"m": Metric(boom)},
                                 [Patch(1, (2,))])
    with pytest.raises(RuntimeError):
        with ablation_by_layer(bridge, spec, {1: torch.randn(spec.d_model)}):
            raise RuntimeError("inside")
    assert not any(hp.fwd_hooks for hp in bridge.hook_dict.values())


def test_bad_inputs_give_clear_errors(tiny_llama):
    spec = tiny_llama.spec
    clean, short = _ids(tiny_llama, CLEAN), _ids(tiny_llama, "He took 1000 mg.")
    cache = run_with_cache(tiny_llama, clean)
    ms = _metrics(tiny_llama)
    with pytest.raises(PatchingError, match="token counts differ"):
        get_act_patch_resid_post(tiny_llama, short, cache, ms, layers=[0])
    with pytest.raises(ValueError, match="out of range"):
        get_act_patch_resid_post(tiny_llama, clean, cache, ms, layers=[spec.n_layers])
    with pytest.raises(ValueError, match="shape"):
        get_act_patch_resid_post(tiny_llama, clean, cache, ms, layers=[0], basis=torch.randn(spec.d_model + 1))
    with pytest.raises(PatchingError, match="out of range"):
        get_act_patch_resid_post(tiny_llama, clean, cache, ms, layers=[0], positions=[len(clean)])
    with pytest.raises(PatchingError, match="no 'blocks.0.hook_attn_out'"):
        get_act_patch_attn_out(tiny_llama, clean, cache, ms, layers=[0])
    with pytest.raises(PatchingError, match="partner has"):
        get_act_patch_resid_post(tiny_llama, clean, cache, ms, layers=[0], partner=[0, 1])
    with pytest.raises(PatchingError, match="non-zero"):
        readout_metric(torch.zeros(spec.d_model), 1, -1)
    with pytest.raises(PatchingError, match="Metric"):
        get_act_patch_resid_post(tiny_llama, clean, cache, {}, layers=[0])
    with pytest.raises(PatchingError, match="random subspace"):
        random_subspace(0, spec.d_model)
    with pytest.raises(ValueError, match="shape"):
        with ablation_by_layer(tiny_llama.bridge, spec, {0: torch.randn(3)}):
            pass


def test_edit_span_locates_insertions_and_substitutions():
    assert edit_span("I am scared now.", "I am not scared now.") == (5, "", "not ")
    assert edit_span("I feel afraid.", "I don't feel afraid.") == (2, "", "don't ")
    assert edit_span("results were good, and", "results were bad, and") == (13, "good", "bad")
    s, a, b = edit_span("took 1000 mg", "took 8000 mg")
    assert (s, a, b) == (5, "1000", "8000")
    with pytest.raises(PatchingError):
        edit_span("same", "same")


def test_alignment_of_pairs_with_and_without_equal_token_counts(tiny_llama):
    spec = tiny_llama.spec
    s = CLEAN.index("1000")
    p = align_pair(spec, "x", CLEAN, CORRUPT, (s, s + 4), (s, s + 4))
    assert p.same_length and p.partner == tuple(range(len(p.corrupt_ids)))
    a, b = "I am scared of the dog.", "I am not scared of the dog."
    st, sa, sb = edit_span(a, b)
    q = align_pair(spec, "neg", a, b, (st, st + len(sa)), (st, st + len(sb)))
    assert not q.same_length
    n_ins = len(q.corrupt_ids) - len(q.clean_ids)
    assert sum(x is None for x in q.partner) == n_ins
    # the shared ending lines up token for token
    assert all(q.clean_ids[q.partner[i]] == q.corrupt_ids[i] for i in range(len(q.corrupt_ids)) if q.partner[i] is not None)
    rep = alignment_report([p, q])
    assert rep["same_length"] == ["x"] and "neg" in rep["length_differs"]
    t0, t1 = char_to_token_span(spec, CLEAN, s, s + 4)
    assert "1000" in spec.tokenizer.decode(spec.encode(CLEAN)[t0:t1]).replace(" ", "")


def test_align_tokens_widens_to_every_differing_position():
    partner, cs, ks = align_tokens([1, 2, 3, 4, 5], [1, 2, 9, 9, 5], (2, 3), (2, 3))
    assert cs == (2, 4) and ks == (2, 4) and partner == (0, 1, 2, 3, 4)
    with pytest.raises(PatchingError, match="same place"):
        align_tokens([1, 2, 3], [1, 2, 3, 4], (0, 1), (2, 3))


def test_negation_span_covers_only_the_inserted_word(tiny_llama):
    spec = tiny_llama.spec
    a, b = "I feel thankful for it.", "I don't feel thankful for it."
    st, sa, sb = edit_span(a, b)
    q = align_pair(spec, "neg", a, b, (st, st + len(sa)), (st, st + len(sb)))
    inserted = spec.tokenizer.decode(list(q.corrupt_ids[q.corrupt_span[0]:q.corrupt_span[1]]))
    assert "don" in inserted and "feel" not in inserted
    assert q.clean_span[0] == q.clean_span[1]


def test_rowwise_ablation_equals_ablation_row_by_row(tiny_llama):
    from emolens.activations import forward_layers
    from emolens.patching import rowwise_ablation, stack_bases

    bridge, spec = tiny_llama
    seqs = [spec.encode(CLEAN), spec.encode(CORRUPT)]
    g = torch.Generator().manual_seed(8)
    per_row = [torch.randn(spec.d_model, generator=g), torch.randn(3, spec.d_model, generator=g)]
    got = {}

    def grab(store):
        def on_layer(layer, resid, offsets):
            store[layer] = resid.float().clone()
        return on_layer

    with rowwise_ablation(bridge, spec, {1: stack_bases(per_row, spec)}):
        forward_layers(bridge, spec, seqs, [2], "resid_post", grab(got))
    for r in range(2):
        one = {}
        with ablation(bridge, spec, per_row[r], 1):
            forward_layers(bridge, spec, [seqs[r]], [2], "resid_post", grab(one))
        assert torch.allclose(got[2][r], one[2][0], atol=1e-5)


# ---- the notebook's analyses (emolens.analyses.patching) ------------------------------------------------------


def test_add_negation_spans_keeps_every_field_and_adds_the_insertion():
    from emolens.analyses.patching import add_negation_spans

    rec = {"id": "n", "emotion": "sad", "affirmed": "I am sad today.", "negated": "I am not sad today.",
           "context": "It rained.", "author": "writer-eval"}
    out = add_negation_spans([rec])[0]
    assert list(out) == ["id", "emotion", "affirmed", "negated", "char_start", "affirmed_span", "negated_span",
                         "context", "author"]
    assert (out["char_start"], out["affirmed_span"], out["negated_span"]) == (5, "", "not ")
    assert add_negation_spans([out])[0] == out  # idempotent


def test_committed_span_fields_match_the_texts():
    from emolens.analyses.patching import negation_records
    from emolens.data.sets import load_minimal_pairs

    assert len(negation_records()) == 24  # raises if a recorded span disagrees with its texts
    for p in load_minimal_pairs():
        assert edit_span(p.clean, p.corrupt) == (p.char_start, p.clean_span, p.corrupt_span), p.id


def test_pair_cases_align_on_a_chat_model(tiny_llama):
    from emolens.analyses.patching import group_labels, negation_records, pair_cases, position_groups
    from emolens.data.sets import load_minimal_pairs

    cases = pair_cases(tiny_llama.spec, load_minimal_pairs()[:3], negation_records()[:2])
    assert [c.kind for c in cases][-2:] == ["negation", "negation"]
    for c in cases:
        T = c.n_tokens
        assert -T < c.message_end < c.colon < 0
        groups = position_groups(c)
        assert groups["colon"] == [T + c.colon]
        assert groups["edit"] == list(range(*c.pair.corrupt_span))
        assert len(group_labels(c)) == len(groups)
    neg = cases[-1]
    assert not neg.pair.same_length and all(neg.pair.partner[p] is None for p in range(*neg.pair.corrupt_span))


def test_grouped_means_and_intervals():
    import numpy as np

    from emolens.analyses.patching import grouped, mean_ci, ratio_ci

    v = np.arange(12.0).reshape(2, 6)
    g = grouped(v, [2, 3, 4, 5, 6, 7], {"a": [2, 3], "b": [7], "none": [0]})
    assert np.allclose(g[:, :2], [[0.5, 5], [6.5, 11]]) and np.isnan(g[:, 2]).all()
    x = np.array([[1.0], [2.0], [3.0], [np.nan]])
    ci = mean_ci(x, n_boot=200)
    assert ci["mean"][0] == 2.0 and ci["low"][0] <= 2.0 <= ci["high"][0] and ci["n"][0] == 3
    r = ratio_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], n_boot=200)
    assert r["value"] == 0.5 and r["low"] == pytest.approx(0.5) and r["high"] == pytest.approx(0.5)


def test_pick_cases_takes_every_kind_in_turn():
    from types import SimpleNamespace

    from emolens.analyses.patching import pick_cases

    cs = [SimpleNamespace(id=f"{k}{i}", kind=k) for k in ("word", "number", "negation") for i in range(3)]
    assert pick_cases(cs, 4) == ["word0", "number0", "negation0", "word1"]
    assert sorted(pick_cases(cs, None)) == sorted(c.id for c in cs)


def test_verdicts_need_enough_pairs_and_a_control():
    import numpy as np

    from emolens.analyses.patching import verdicts

    lines = {"groups": ["edit", "colon"],
             "early": {"mean": np.array([0.1, 0.0]), "low": np.array([0.05, -0.1]), "high": np.array([0.2, 0.1]),
                       "n": np.array([10, 10])},
             "late": {"mean": np.array([0.1, 0.2]), "low": np.array([0.05, 0.1]), "high": np.array([0.2, 0.3]),
                      "n": np.array([2, 2])}}
    ci = {"value": -0.5, "low": -0.7, "high": -0.3, "n": 12}
    ctrl = {"value": 0.0, "low": -0.1, "high": 0.1, "n": 12}
    abl = {"none": {"kind": "none", "random": False},
           "emotion @ layer 3": {"kind": "emotion", "random": False, "margins_change": ci, "readouts_change": ctrl,
                                 "cost": {"kl_per_token": 0.1}},
           "random emotion @ layer 3": {"kind": "emotion", "random": True, "margins_change": ctrl,
                                        "readouts_change": ctrl, "cost": {"kl_per_token": 0.01}}}
    v = verdicts(lines, {}, {}, abl)
    assert v["readout difference at edit, early layers, is above zero"]["status"] == "holds"
    assert v["readout difference at colon, early layers, is above zero"]["status"] == "not shown"
    assert v["readout difference at colon, late layers, is above zero"]["status"].startswith("too few pairs")
    margin = [k for k in v if "margin" in k][0]
    assert v[margin]["holds"] is True
    assert [v[k]["holds"] for k in v if "colon readout" in k] == [False]
