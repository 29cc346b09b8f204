"""Span steering, the sparse-k search, probe-preference correlations and steering shifts, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.activations import forward_layers
from emolens.analyses.preferences import (
    ChoiceSteer,
    Tournament,
    all_pairs,
    choice_probabilities,
    choice_prompt_spans,
    focal_strengths,
    matching_effect,
    probe_preference,
    probe_vs_shift,
    spanning_emotions,
    sparse_k_curve,
    steering_pairs,
)
from emolens.interventions import named_span, span_steering, text_span, token_span

ACTIVITIES = ["water the garden", "sort old receipts into folders", "learn a new card game",
              "repaint the fence", "read a long novel about ships"]


def _logits(bridge, spec, seqs, padding_side="right"):
    """Full logits ``[B, T, vocab]`` of a padded batch, and the offsets of each row."""
    from emolens.activations import _pad_id

    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), _pad_id(spec))
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    offsets = []
    for i, s in enumerate(seqs):
        o = T - len(s) if padding_side == "left" else 0
        ids[i, o:o + len(s)] = torch.tensor(s)
        mask[i, o:o + len(s)] = 1
        offsets.append(o)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return bridge(ids, attention_mask=mask, position_ids=pos).float(), offsets


def _direction(spec, seed=0):
    return torch.randn(spec.d_model, generator=torch.Generator().manual_seed(seed))


def test_token_span_maps_characters_to_tokens(tiny_any):
    _, spec = tiny_any
    prompt, sa, sb = choice_prompt_spans(spec, ACTIVITIES[0], ACTIVITIES[1])
    ids = spec.encode(prompt)
    decoded_a = spec.tokenizer.decode(ids[sa[0]:sa[1]])
    assert ACTIVITIES[0] in decoded_a and ACTIVITIES[1] not in decoded_a
    assert ACTIVITIES[1] in spec.tokenizer.decode(ids[sb[0]:sb[1]]) and sa[1] <= sb[0]
    assert token_span(spec, prompt, 5, 5)[0] == token_span(spec, prompt, 5, 5)[1]  # zero width stays zero width
    with pytest.raises(ValueError, match="out of range"):
        token_span(spec, prompt, 0, len(prompt) + 1)
    with pytest.raises(ValueError, match="does not occur"):
        text_span(spec, prompt, "juggle flaming torches")


def test_alpha_zero_and_empty_span_are_exact_no_ops(tiny_llama):
    bridge, spec = tiny_llama
    seq = spec.encode("The fox sleeps by the stove while the cat watches the door.")
    clean, _ = _logits(bridge, spec, [seq])
    d = _direction(spec)
    with span_steering(bridge, spec, d, [0, 1], 0.0, 1.0, [[(2, 6)]]):
        zero_alpha, _ = _logits(bridge, spec, [seq])
    with span_steering(bridge, spec, d, [0, 1], 3.0, 1.0, [[(4, 4)]]):
        zero_width, _ = _logits(bridge, spec, [seq])
    with span_steering(bridge, spec, d, [0, 1], 3.0, 1.0, [[(2, 6)]]):
        steered, _ = _logits(bridge, spec, [seq])
    assert torch.equal(clean, zero_alpha) and torch.equal(clean, zero_width)
    assert not torch.allclose(clean, steered, atol=1e-3)  # ...while a real span does change the output


def test_span_steering_leaves_tokens_before_the_span_untouched(tiny_any):
    bridge, spec = tiny_any
    seq = spec.encode("The fox sleeps by the stove while the cat watches the door and the rain falls.")
    start, end = 5, 9
    layer = 1
    got = {}
    for name, ctx in (("clean", None), ("steered", (start, end))):
        rows: list = []

        def grab(_: int, resid, offsets, rows=rows) -> None:
            rows.append(resid[0].float().clone())

        if ctx is None:
            forward_layers(bridge, spec, [seq], [spec.n_layers - 1], "resid_post", grab)
        else:
            with span_steering(bridge, spec, _direction(spec), layer, 2.0, 1.0, [[ctx]]):
                forward_layers(bridge, spec, [seq], [spec.n_layers - 1], "resid_post", grab)
        got[name] = rows[0]
    assert torch.equal(got["clean"][:start], got["steered"][:start])  # causal: nothing before the span moves
    assert not torch.allclose(got["clean"][start:end], got["steered"][start:end], atol=1e-3)


def test_unsteered_rows_of_a_batch_are_identical(tiny_llama):
    bridge, spec = tiny_llama
    seqs = [spec.encode(t) for t in ("The fox sleeps by the stove.", "A cat watches the door in the rain tonight.")]
    clean, _ = _logits(bridge, spec, seqs)
    with span_steering(bridge, spec, _direction(spec), [0, 1], 2.0, 1.0, [[(1, 4)], []]):
        steered, _ = _logits(bridge, spec, seqs)
    assert torch.equal(clean[1], steered[1]) and not torch.allclose(clean[0], steered[0], atol=1e-3)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_padded_span_steering_equals_one_at_a_time(tiny_any, padding_side):
    bridge, spec = tiny_any
    seqs = [spec.encode(t) for t in ("The fox sleeps by the stove.", "A cat watches.",
                                     "Rain falls on the long road to the sea tonight, and the fox waits.")]
    spans = [[(1, 3)], [(2, 4)], [(3, 7), (9, 10)]]
    lengths = [len(s) for s in seqs]
    d = _direction(spec, 1)
    with span_steering(bridge, spec, d, [0, 1], 1.5, 1.0, spans, lengths, padding_side):
        batched, offsets = _logits(bridge, spec, seqs, padding_side)
    for r, s in enumerate(seqs):
        with span_steering(bridge, spec, d, [0, 1], 1.5, 1.0, [spans[r]], [len(s)]):
            single, _ = _logits(bridge, spec, [s])
        o = offsets[r]
        assert torch.allclose(batched[r, o:o + len(s)], single[0], atol=1e-4), f"row {r}"


def test_span_steering_refuses_bad_inputs(tiny_llama):
    bridge, spec = tiny_llama
    d = _direction(spec)
    for alpha in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            with span_steering(bridge, spec, d, 0, alpha, 1.0, [[(0, 2)]]):
                pass
    with pytest.raises(ValueError, match="out of range"):
        with span_steering(bridge, spec, d, 0, 1.0, 1.0, [[(2, 9)]], lengths=[5]):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with span_steering(bridge, spec, d, 0, 1.0, 1.0, [[(3, 1)]]):
            pass
    with pytest.raises(ValueError, match="left padding"):
        with span_steering(bridge, spec, d, 0, 1.0, 1.0, [[(0, 1)]], padding_side="left"):
            pass
    with pytest.raises(ValueError, match="span kind"):
        named_span(spec, "a", "b", "middle")


def test_steered_choices_change_only_prompts_with_a_focal_activity(tiny_llama):
    model = tiny_llama
    pairs = [(0, 1), (1, 0), (2, 3), (3, 2)]
    clean = choice_probabilities(model, ACTIVITIES, pairs, batch_size=4, prefix_reuse=False)  # the steered path
    assert np.allclose(choice_probabilities(model, ACTIVITIES, pairs, batch_size=4), clean, atol=1e-5)
    steer = ChoiceSteer({0: _direction(model.spec).numpy(), 1: _direction(model.spec, 2).numpy()},
                        {0: 1.0, 1: 1.0}, 3.0, frozenset({0}))
    hit = choice_probabilities(model, ACTIVITIES, pairs, batch_size=4, steer=steer)
    assert np.array_equal(clean[2:], hit[2:]) and not np.allclose(clean[:2], hit[:2], atol=1e-4)
    none = ChoiceSteer(steer.directions, steer.norms, 0.0, frozenset({0}))
    assert np.array_equal(clean, choice_probabilities(model, ACTIVITIES, pairs, batch_size=4, steer=none))


def _planted_tournament(n=20, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n) * 1.5
    pairs = all_pairs(n)
    logit = np.array([theta[i] - theta[j] for i, j in pairs]) + rng.normal(size=len(pairs)) * noise
    return theta, Tournament(n, pairs, 1 / (1 + np.exp(-logit)))


def test_k_search_finds_a_small_k_on_clean_ratings_and_a_larger_one_on_noisy():
    _, clean = _planted_tournament()
    _, noisy = _planted_tournament(noise=2.5)
    ks = [1, 2, 4, 8, 12]
    a = sparse_k_curve(clean, ks, seeds=5)
    b = sparse_k_curve(noisy, ks, seeds=5)
    assert a["k"] is not None and a["rho_min"][-1] > 0.99
    assert b["k"] is None or b["k"] > a["k"]  # noise needs more games per item
    assert np.all(np.diff(b["rho_mean"]) > -0.05)  # agreement grows with k
    with pytest.raises(ValueError):
        sparse_k_curve(clean, [0, 3])


def test_probe_preference_finds_a_planted_emotion_and_not_the_others():
    rng = np.random.default_rng(0)
    n, E = 64, 30
    ratings = rng.normal(size=n)
    readouts = rng.normal(size=(n, E))
    readouts[:, 3] = ratings + 0.5 * rng.normal(size=n)  # planted: r about 0.9
    readouts[:, 7] = -ratings + 1.0 * rng.normal(size=n)  # planted negative: r about -0.7
    res = probe_preference(readouts, ratings, rng.normal(size=(n, 50)), n_boot=300, n_perm=300)
    assert res["r"][3] > 0.8 and res["low"][3] > 0.6 and res["p"][3] < 0.01
    assert res["r"][7] < -0.5 and res["high"][7] < -0.3
    others = np.delete(np.arange(E), [3, 7])
    assert np.mean(res["p"][others] < 0.05) < 0.2 and np.abs(res["random_r"]).max() < 0.5
    with pytest.raises(ValueError):
        probe_preference(readouts, ratings[:10])


def test_focal_strengths_recover_a_planted_shift():
    rng = np.random.default_rng(1)
    n = 16
    theta = rng.normal(size=n)
    steered, control = list(range(8)), list(range(8, 16))
    pairs = steering_pairs(steered, control, 4, seed=0)
    shift = np.linspace(-1, 1, 8)

    def tour(th):
        return Tournament(n, pairs, np.array([1 / (1 + np.exp(-(th[i] - th[j]))) for i, j in pairs]))
    moved = theta.copy()
    moved[steered] += shift
    got = focal_strengths(tour(moved), steered, theta) - focal_strengths(tour(theta), steered, theta)
    assert np.allclose(got, shift, atol=1e-3)
    with pytest.raises(ValueError):
        steering_pairs([0, 1], [1, 2], 1)


def test_probe_vs_shift_and_matching_effect_on_planted_data():
    rng = np.random.default_rng(2)
    r = rng.uniform(-0.6, 0.6, 30)
    related = probe_vs_shift(r, 300 * r + rng.normal(size=30) * 20, n_perm=500, n_boot=300)
    unrelated = probe_vs_shift(r, rng.normal(size=30), n_perm=500, n_boot=300)
    assert related["value"] > 0.9 and related["p"] < 0.01 and unrelated["p"] > 0.01
    names = [f"e{i}" for i in range(30)]
    picks = spanning_emotions(names, r, 6)
    assert len(picks) == 6 and names[int(np.argmin(r))] in picks and names[int(np.argmax(r))] in picks
    d = rng.normal(size=(8, 8)) * 0.1 + np.eye(8)
    assert matching_effect(d, n_perm=500)["p"] < 0.01
    assert matching_effect(rng.normal(size=(8, 8)), n_perm=500)["p"] > 0.01


def _tiny_vectors(spec):
    from emolens.provenance import provenance
    from emolens.vectors import build_emotion_vectors

    g = torch.Generator().manual_seed(3)
    means = torch.randn(6, 2, spec.d_model, generator=g)
    return build_emotion_vectors(means, torch.ones(6), ["calm", "calm", "sad", "sad", "happy", "happy"],
                                 ["calm", "sad", "happy"], [0, 1], None, provenance=provenance(spec),
                                 residual_norms=torch.tensor([2.0, 3.0]))


def test_vectors_steer_with_spans_equals_span_steering_with_each_layers_vector_and_norm(tiny_llama):
    bridge, spec = tiny_llama
    ev = _tiny_vectors(spec)
    seq = spec.encode("The fox sleeps by the stove while the cat watches.")
    with ev.steer(tiny_llama, "sad", 0.7, [0, 1], spans=[[(2, 5)]]):
        a, _ = _logits(bridge, spec, [seq])
    with span_steering(bridge, spec, {0: ev.vector("sad", 0), 1: ev.vector("sad", 1)}, [0, 1], 0.7,
                       {0: 2.0, 1: 3.0}, [[(2, 5)]]):
        b, _ = _logits(bridge, spec, [seq])
    clean, _ = _logits(bridge, spec, [seq])
    assert torch.equal(a, b) and not torch.allclose(a, clean, atol=1e-3)
    with pytest.raises(ValueError, match="not both"):
        with ev.steer(tiny_llama, "sad", 0.7, [0, 1], from_position=2, spans=[[(2, 5)]]):
            pass


def test_cached_tournament_is_reused_and_keyed_on_the_steering(tiny_llama, isolated_cache):
    from emolens.analyses.preferences import emotion_steer, rating_shift, tournament

    ev = _tiny_vectors(tiny_llama.spec)
    pairs = [(0, 1), (1, 0), (2, 3), (3, 2)]
    first = tournament(tiny_llama, ACTIVITIES, pairs, progress=False)
    again = tournament(tiny_llama, ACTIVITIES, pairs, progress=False)
    assert np.array_equal(first.p_first, again.p_first)
    chunked = tournament(tiny_llama, ACTIVITIES, pairs[:3], progress=False, chunk_size=2)  # resumable chunks
    assert np.allclose(chunked.p_first, first.p_first[:3], atol=1e-5)
    steer = emotion_steer(ev, "happy", [0, 1], 2.0, [0, 2])
    hit = tournament(tiny_llama, ACTIVITIES, pairs, steer, progress=False)
    assert not np.allclose(hit.p_first, first.p_first, atol=1e-4)
    zero = emotion_steer(ev, "happy", [0, 1], 0.0, [0, 2])
    fixed = np.zeros(len(ACTIVITIES))
    assert np.array_equal(rating_shift(tiny_llama, ACTIVITIES, fixed, [0, 2], pairs, zero), np.zeros(2))


def test_balanced_stories_spread_writers_and_channels_and_subsets_keep_categories():
    from types import SimpleNamespace

    from emolens.analyses.preferences import activity_subset, balanced_stories

    stories = [SimpleNamespace(emotion=e, author=f"w{j % 4}", channel=f"c{j % 5}", id=f"{e}-{12 + j}", slot=12 + j)
               for e in ("calm", "sad") for j in range(20)]
    picked = balanced_stories(stories, 4)
    for e in ("calm", "sad"):
        mine = [s for s in picked if s.emotion == e]
        assert len(mine) == 4 and len({s.author for s in mine}) == 4 and len({s.channel for s in mine}) == 4
    with pytest.raises(ValueError):
        balanced_stories(stories, 0)
    acts = [SimpleNamespace(category=c, text=f"{c}{i}") for c in ("a", "b") for i in range(5)]
    sub = activity_subset(acts, 2)
    assert [a.text for a in sub] == ["a0", "a1", "b0", "b1"] and activity_subset(acts, None) == acts


def test_ablated_choices_equal_a_manual_ablation_and_are_cached_apart(tiny_llama, isolated_cache):
    from emolens.analyses.preferences import ChoiceAblation, last_position_logits, letter_ids, tournament
    from emolens.patching import ablation_by_layer

    model = tiny_llama
    pairs = [(0, 1), (1, 0), (2, 3), (3, 2)]
    bases = {0: _direction(model.spec, 3)[None].numpy(), 1: torch.stack([_direction(model.spec, 4),
                                                                        _direction(model.spec, 5)]).numpy()}
    abl = ChoiceAblation(bases, "test")
    hit = choice_probabilities(model, ACTIVITIES, pairs, batch_size=4, ablate=abl)
    prompts = [choice_prompt_spans(model.spec, ACTIVITIES[i], ACTIVITIES[j])[0] for i, j in pairs]
    with ablation_by_layer(model.bridge, model.spec, {k: torch.as_tensor(v) for k, v in bases.items()}):
        logits = last_position_logits(model, prompts, batch_size=1)  # the obvious way: one prompt at a time
    a, b = letter_ids(model.spec)
    manual = torch.softmax(torch.stack([logits[:, a], logits[:, b]], 1), 1)[:, 0].numpy()
    assert np.allclose(hit, manual, atol=1e-5)
    clean = tournament(model, ACTIVITIES, pairs, progress=False)
    assert not np.allclose(clean.p_first, hit, atol=1e-4)
    cached = tournament(model, ACTIVITIES, pairs, progress=False, ablate=abl)
    assert np.allclose(cached.p_first, hit, atol=1e-5)
    assert np.array_equal(tournament(model, ACTIVITIES, pairs, progress=False).p_first, clean.p_first)


def test_ablation_preferences_without_ablation_is_the_sparse_design_itself(tiny_llama, isolated_cache):
    from emolens.analyses.preferences import ChoiceAblation, ablation_preferences, tournament

    acts = ACTIVITIES + ["fold the laundry", "plan a picnic", "fix a squeaky door"]
    cats = ["helpful", "helpful", "engaging", "unsafe", "unsafe", "misaligned", "misaligned", "engaging"]
    full = tournament(tiny_llama, acts, progress=False)
    abl = ChoiceAblation({1: _direction(tiny_llama.spec, 6)[None].numpy()}, "one")
    out = ablation_preferences(tiny_llama, acts, cats, full, {"one": abl}, k=3, n_boot=50, progress=False)
    assert out["none"]["spearman_vs_unablated"] == pytest.approx(1.0)
    assert out["none"]["mean_abs_change"]["value"] == 0.0
    assert set(out) == {"none", "one"} and out["one"]["dims"] == {"1": 1}


def test_valence_direction_recovers_a_planted_axis():
    from types import SimpleNamespace

    from emolens.analyses.patching import valence_direction

    rng = np.random.default_rng(0)
    axis = torch.tensor(rng.normal(size=16), dtype=torch.float32)
    axis = axis / axis.norm()
    names = [f"e{i}" for i in range(12)]
    val = {n: float(v) for n, v in zip(names, rng.uniform(1, 9, 12))}
    X = torch.stack([val[n] * axis + 0.01 * torch.tensor(rng.normal(size=16), dtype=torch.float32) for n in names])
    ev = SimpleNamespace(emotions=names, at=lambda layer: X, emotion_index=names.index)
    d = valence_direction(ev, 0, val)
    assert float(d @ axis) > 0.99 and abs(float(d.norm()) - 1) < 1e-5
    with pytest.raises(ValueError, match="valence rating"):
        valence_direction(ev, 0, {"e0": 1.0})


# ---- shared-prefix key/value reuse in last_position_logits ----------------------------------------------------
_SHARED = "The quick brown fox jumps over the lazy dog while the cat sleeps by the warm stove. "
# tails of different lengths; the short ones keep the prefix inside a sliding window (the tiny Gemma's is 16)
_TAILS = ["A", "She opened the letter.", "He took 1000 mg, then 8000 mg of the medicine.", "Four.", "the numbers 0123"]


def _spy_reuse(monkeypatch):
    """Count the calls of the shared-prefix path (it still runs)."""
    from emolens.analyses import preferences

    calls = []
    real = preferences.shared_prefix_logits

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(preferences, "shared_prefix_logits", spy)
    return calls


@pytest.mark.parametrize("batch_size", [1, 3])
def test_prefix_reuse_equals_the_full_path(tiny_any, batch_size, monkeypatch, caplog):
    from emolens.analyses.preferences import last_position_logits, prefix_reuse_blockers, shared_prefix_length

    model = tiny_any
    prompts = [_SHARED + t for t in _TAILS]
    assert prefix_reuse_blockers(model, prompts) == []
    calls = _spy_reuse(monkeypatch)
    with caplog.at_level("INFO", logger="emolens.analyses.preferences"):
        reused = last_position_logits(model, prompts, batch_size)
    assert calls == [1] and not caplog.records  # taken, and no fallback
    full = last_position_logits(model, prompts, batch_size, prefix_reuse=False)
    assert calls == [1]
    assert torch.allclose(reused, full, atol=1e-4)
    one_by_one = torch.cat([last_position_logits(model, [p], 1, prefix_reuse=False) for p in prompts])
    assert torch.allclose(reused, one_by_one, atol=1e-4)  # batch and padding invariant too
    # choice prompts (a chat template's or Human/Assistant's header before the activities)
    choices = [choice_prompt_spans(model.spec, ACTIVITIES[i], ACTIVITIES[j])[0] for i, j in [(0, 1), (3, 2), (4, 0)]]
    seqs = [model.spec.encode(p) for p in choices]
    assert 8 <= shared_prefix_length(seqs) < min(len(s) for s in seqs)
    assert torch.allclose(last_position_logits(model, choices, batch_size),
                          last_position_logits(model, choices, batch_size, prefix_reuse=False), atol=1e-4)
    assert calls == [1, 1]


def test_shared_prefix_length_leaves_a_token_outside():
    from emolens.analyses.preferences import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # one prompt is the other's prefix
    assert shared_prefix_length([[7, 8, 9]]) == 2 and shared_prefix_length([[1], [2]]) == 0
    assert shared_prefix_length([]) == 0


def test_a_short_shared_prefix_takes_the_full_path(tiny_llama, monkeypatch, caplog):
    from emolens.analyses.preferences import last_position_logits, prefix_reuse_blockers

    prompts = ["The fox sleeps.", "She opened the letter, read it twice."]
    assert any("shared prefix" in r for r in prefix_reuse_blockers(tiny_llama, prompts))
    calls = _spy_reuse(monkeypatch)
    with caplog.at_level("INFO", logger="emolens.analyses.preferences"):
        got = last_position_logits(tiny_llama, prompts, 2)
    assert calls == [] and "shared prefix" in caplog.text
    assert torch.equal(got, last_position_logits(tiny_llama, prompts, 2, prefix_reuse=False))


def test_an_intervention_or_attached_hooks_take_the_full_path(tiny_llama, monkeypatch):
    from emolens.analyses.preferences import last_position_logits, prefix_reuse_blockers

    model = tiny_llama
    bridge, spec = model
    prompts = [_SHARED + t for t in _TAILS[:3]]
    d = _direction(spec)
    calls = _spy_reuse(monkeypatch)

    def steer(batch, lengths):  # steers tokens 2..6, inside the shared prefix
        return span_steering(bridge, spec, d, [0, 1], 3.0, 1.0, [[(2, 6)] for _ in batch], lengths)
    steered = last_position_logits(model, prompts, 3, intervention=steer)
    assert calls == []
    with span_steering(bridge, spec, d, [0, 1], 3.0, 1.0, [[(2, 6)] for _ in prompts]):
        assert any("hooks are attached" in r for r in prefix_reuse_blockers(model, prompts))
        outside = last_position_logits(model, prompts, 3)
    assert calls == [] and prefix_reuse_blockers(model, prompts) == []
    assert torch.allclose(steered, outside, atol=1e-5)
    assert not torch.allclose(steered, last_position_logits(model, prompts, 3), atol=1e-3)
    assert calls == [1]


def test_a_model_that_cannot_take_a_cache_falls_back_quietly(tiny_llama, monkeypatch, caplog):
    from emolens.analyses import preferences

    prompts = [_SHARED + t for t in _TAILS[:3]]
    want = preferences.last_position_logits(tiny_llama, prompts, 2, prefix_reuse=False)
    monkeypatch.setattr(preferences, "_cache_keyword", lambda bridge: None)
    assert any("no key/value cache" in r for r in preferences.prefix_reuse_blockers(tiny_llama, prompts))
    assert torch.equal(preferences.last_position_logits(tiny_llama, prompts, 2), want)
    monkeypatch.undo()

    def unfilled(*args):
        raise RuntimeError("the prefix run left [0] tokens in the cache")
    monkeypatch.setattr(preferences, "_prefix_cache", unfilled)
    with caplog.at_level("WARNING", logger="emolens.analyses.preferences"):
        got = preferences.last_position_logits(tiny_llama, prompts, 2)
    assert torch.equal(got, want) and "prefix reuse failed" in caplog.text
