"""Forced choices, ratings from choices, and the cost of an intervention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.analyses.preferences import (
    Tournament,
    all_pairs,
    bradley_terry,
    choice_probabilities,
    elo,
    last_position_logits,
    rating_ci,
    sparse_pairs,
)

ACTIVITIES = ["water the garden", "sort old receipts into folders", "learn a new card game",
              "repaint the fence", "read a long novel about ships"]


def test_last_position_logits_equal_the_full_forward(tiny_any):
    bridge, spec = tiny_any
    prompts = ["The fox sleeps.", "A much longer prompt about the fox, the stove and the sleeping cat."]
    got = last_position_logits((bridge, spec), prompts, batch_size=2)
    for k, p in enumerate(prompts):
        want = bridge(torch.tensor([spec.encode(p)]))[0, -1]
        assert torch.allclose(got[k], want.float(), atol=1e-4)


def test_pair_scoring_equals_one_prompt_at_a_time(tiny_llama):
    model = tiny_llama
    pairs = all_pairs(len(ACTIVITIES))[:9]
    batched = choice_probabilities(model, ACTIVITIES, pairs, batch_size=4)
    single = np.concatenate([choice_probabilities(model, ACTIVITIES, [p], batch_size=1) for p in pairs])
    assert np.allclose(batched, single, atol=1e-5) and ((batched > 0) & (batched < 1)).all()


def _planted(n=12, bias=1.2, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n) * 1.5
    pairs = all_pairs(n)
    p = np.array([1 / (1 + np.exp(-(theta[i] - theta[j] + bias))) for i, j in pairs])  # a strong first-option bias
    return theta, Tournament(n, pairs, p)


def test_both_orders_cancel_a_planted_position_bias_and_bradley_terry_recovers_ratings():
    theta, t = _planted()
    assert t.first_option_rate() > 0.65  # the bias is there...
    fit = bradley_terry(t.n, t.outcomes())
    assert np.corrcoef(fit, theta)[0, 1] > 0.999  # ...and gone from the ratings
    first_only = [(i, j, float(p)) for (i, j), p in zip(t.pairs, t.p_first) if i < j]
    biased = bradley_terry(t.n, first_only)
    assert np.abs(fit - (theta - theta.mean())).max() < np.abs(biased - (theta - theta.mean())).max()


def test_elo_orders_like_bradley_terry_and_cis_cover_the_truth():
    theta, t = _planted(bias=0.0)
    outcomes = t.outcomes()
    e = elo(t.n, outcomes)
    assert np.corrcoef(e, theta)[0, 1] > 0.95
    lo, hi = rating_ci(t.n, outcomes, n_boot=100)
    centred = theta - theta.mean()
    assert np.mean((lo <= centred + 0.1) & (centred - 0.1 <= hi)) > 0.8


def test_sparse_design_covers_every_item_in_both_orders():
    pairs = sparse_pairs(10, 3, seed=1)
    assert all((j, i) in pairs for i, j in pairs)
    assert all(sum(1 for i, j in pairs if i == a or j == a) >= 6 for a in range(10))
    with pytest.raises(ValueError):
        sparse_pairs(5, 5)


def test_intervention_cost_is_zero_for_alpha_zero_and_grows_with_alpha(tiny_llama):
    from emolens.interventions import intervention_cost, steering

    bridge, spec = tiny_llama
    texts = ["The fox sleeps by the stove while the cat watches.", "Human: What is two plus two?"]
    d = torch.ones(spec.d_model)
    none = intervention_cost(bridge, spec, texts, lambda: steering(bridge, spec, d, 1, 0.0, 1.0))
    assert none["kl_per_token"] == pytest.approx(0.0, abs=1e-6) and none["perplexity_ratio"] == pytest.approx(1.0)
    small = intervention_cost(bridge, spec, texts, lambda: steering(bridge, spec, d, 1, 0.5, 1.0))
    big = intervention_cost(bridge, spec, texts, lambda: steering(bridge, spec, d, 1, 5.0, 1.0))
    assert 0 < small["kl_per_token"] < big["kl_per_token"]


def test_category_agreement_with_the_paper_is_exact_and_permutation_tested(tmp_path):
    from emolens.analyses.preferences import paper_category_agreement
    from emolens.data.sets import load_paper_activity_elo

    rows = load_paper_activity_elo()
    assert len(rows) == 64 and {r[0] for r in rows} == {"helpful", "engaging", "social", "self_curiosity", "neutral",
                                                        "aversive", "misaligned", "unsafe"}
    cats = [r[0] for r in rows]
    same = paper_category_agreement([r[1] for r in rows], cats, rows)
    assert same["spearman"] == pytest.approx(1.0) and same["p"] == pytest.approx(1 / 40320)
    flipped = paper_category_agreement([-r[1] for r in rows], cats, rows)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["p"] == pytest.approx(1.0)
    base = paper_category_agreement([r[2] for r in rows], cats, rows, column=2)
    assert base["spearman"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lacks categories"):
        paper_category_agreement([1.0, 2.0], ["helpful", "made_up"], rows)


def test_paper_activity_elo_refuses_an_unknown_category(tmp_path):
    from emolens.data import DataError
    from emolens.data.sets import load_paper_activity_elo

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "paper_activity_elo.jsonl").write_text(
        '{"rank": 1, "category": "fun", "elo_post_trained": 1500, "elo_base": 1400}\n')
    with pytest.raises(DataError, match="fun"):
        load_paper_activity_elo(tmp_path)
