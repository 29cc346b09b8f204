"""Speaker positions, speaker-token probes and the dissociation measure (emolens.speakers), on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.data.dialogues import Dialogue
from emolens.models.spec import ModelError
from emolens.speakers import (
    dialogue_probes,
    dissociation,
    dissociation_index,
    lexicon_rates,
    render,
    span_means,
    speaker_activations,
    speaker_groups,
    speaker_roles,
    speaker_tokens,
    standardised_change,
)

TURNS = ((0, "Hello there friend."), (1, "I feel low today."), (0, "Oh no, tell me more."),
         (1, "The dog ran off and never came back home."))


def planted(speakers=("Human", "Assistant"), turns=TURNS, context=None) -> Dialogue:
    return Dialogue("planted", "speakers", speakers, ("happy", "sad"), turns, 1, "human_assistant",
                    context=context)


def decoded(spec, st, s):
    return spec.tokenizer.decode([st.ids[p] for p in st.positions(s)])


@pytest.mark.parametrize("rendering", ["chat", "swapped", "plain"])
def test_planted_turns_are_found_on_every_template(tiny_any, rendering):
    _, spec = tiny_any
    st = speaker_tokens(spec, planted(), rendering)
    assert decoded(spec, st, 0) == "Hello there friend.Oh no, tell me more."
    assert decoded(spec, st, 1) == "I feel low today.The dog ran off and never came back home."
    assert not set(st.positions(0)) & set(st.positions(1))
    assert all(0 < p < len(st.ids) for s in (0, 1) for p in st.positions(s))


def test_headers_and_names_are_never_speaker_tokens(tiny_llama):
    _, spec = tiny_llama
    st = speaker_tokens(spec, planted(("Alex", "Noor")), "plain")
    words = decoded(spec, st, 0) + decoded(spec, st, 1)
    assert "Alex" not in words and "Noor" not in words and ":" not in words
    ch = speaker_tokens(spec, planted(), "chat")
    specials = set(spec.tokenizer.all_special_ids)
    assert not any(ch.ids[p] in specials for s in (0, 1) for p in ch.positions(s))
    assert "assistant" not in decoded(spec, ch, 0) + decoded(spec, ch, 1)


def test_roles_follow_names_and_swap():
    d = planted(("Assistant", "Human"))
    assert speaker_roles(d, "chat") == ("assistant", "user")
    assert speaker_roles(d, "swapped") == ("user", "assistant")
    assert speaker_groups(d, "chat") == ("Assistant", "Human")
    assert speaker_groups(planted(("Alex", "Noor")), "plain") == ("first", "second")
    assert speaker_groups(planted(("Alex", "Noor")), "chat") == ("Human", "Assistant")


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"])
def test_shipped_chat_templates_place_speakers(name):
    """The real SmolLM2 and Qwen templates (default system prompts, chat markers) and Gemma-3's plain format,
    with the tokenizers the embedded models ship (skipped where a model has not been fetched)."""
    from transformers import AutoTokenizer

    from emolens.models.spec import ModelSpec
    from emolens.paths import cache_dir

    folder = cache_dir() / "models" / name
    if not (folder / "tokenizer.json").exists():
        pytest.skip(f"{name} not fetched")
    tok = AutoTokenizer.from_pretrained(folder)
    spec = ModelSpec(name, name, 2, 8, 1, True, "float32", "cpu", "test", None, None, None, tokenizer=tok)
    for rendering in ("chat", "swapped", "plain"):
        for speakers in (("Human", "Assistant"), ("Assistant", "Human"), ("Alex", "Noor")):
            st = speaker_tokens(spec, planted(speakers), rendering)
            assert "".join(decoded(spec, st, 0).split()) == "Hellotherefriend.Ohno,tellmemore."
            assert "".join(decoded(spec, st, 1).split()) == "Ifeellowtoday.Thedogranoffandnevercamebackhome."
    ctx = speaker_tokens(spec, planted(context="Sam is secretly furious."), "plain")
    assert "furious" not in decoded(spec, ctx, 0) + decoded(spec, ctx, 1)


def test_other_speaker_text_leaves_probe_input_untouched(tiny_llama):
    bridge, spec = tiny_llama
    changed = TURNS[:3] + ((1, "Completely different words from the other person now."),)
    a, b = speaker_tokens(spec, planted(), "chat"), speaker_tokens(spec, planted(turns=changed), "chat")
    assert [a.ids[p] for p in a.positions(0)] == [b.ids[p] for p in b.positions(0)]
    assert [a.ids[p] for p in a.positions(1)] != [b.ids[p] for p in b.positions(1)]
    # speaker 0 speaks before the changed turn, so causal attention cannot carry it into speaker 0's tokens
    m = span_means(bridge, spec, [a.ids, b.ids], [a.positions(0), b.positions(0)], 1, progress=False)
    assert torch.allclose(m[0], m[1], atol=1e-5)
    m1 = span_means(bridge, spec, [a.ids, b.ids], [a.positions(1), b.positions(1)], 1, progress=False)
    assert not torch.allclose(m1[0], m1[1], atol=1e-3)


def test_span_means_equal_hand_pooling(tiny_llama):
    from emolens.activations import token_residuals

    bridge, spec = tiny_llama
    st = speaker_tokens(spec, planted(), "chat")
    ids, res = token_residuals(bridge, spec, st.text, [2])
    assert ids == st.ids
    m = span_means(bridge, spec, [st.ids, st.ids], [st.positions(0), []], 2, progress=False)
    assert torch.allclose(m[0], res[st.positions(0), 0].mean(0), atol=1e-4)
    assert torch.isnan(m[1]).all()


def test_speaker_activations_cached_and_shaped(tiny_llama, isolated_cache):
    d2 = planted(("Alex", "Noor"))
    a = speaker_activations(tiny_llama, [planted(), d2], 1, "plain", max_turns=3, progress=False)
    b = speaker_activations(tiny_llama, [planted(), d2], 1, "plain", max_turns=3, progress=False)
    assert a.shape == (2, 2, tiny_llama.spec.d_model) and torch.equal(a, b)
    assert any((isolated_cache / "cache" / "speakers").glob("*.safetensors"))


def test_probes_are_centred_and_denoised():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((30, 8)), dtype=torch.float32)
    labels = ["a", "b", "c"] * 10
    pc = torch.eye(8)[:1]
    p = dialogue_probes(x, labels, ["a", "b", "c"], pc)
    assert torch.allclose(p.vectors.sum(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(p.vectors[:, 0], torch.zeros(3), atol=1e-6)
    # a row equal to a probe's own mean scores highest on that probe
    s = p.scores(x[[0, 3]].mean(0, keepdim=True) * 0 + (p.vectors[1] + p.centre)[None])
    assert s.argmax() == 1
    with pytest.raises(ValueError, match="no pooled row"):
        dialogue_probes(x, labels, ["a", "z"], pc)


def test_dissociation_zero_when_moving_together():
    rng = np.random.default_rng(1)
    b0 = rng.normal(0, 1, 40)
    b1 = b0 + 1.0 + rng.normal(0, 0.3, 40)
    x0, x1 = 3 * b0 + 2, 3 * b1 + 2  # expression an affine copy of behaviour
    d = dissociation(b0, b1, {"x": x0}, {"x": x1}, n_boot=200)
    assert abs(d.index["x"].value) < 1e-9 and abs(d.ratio["x"].value - 1) < 1e-9
    assert d.verdict["x"] == "both move"
    neg = dissociation(b0, b1, {"x": -x0}, {"x": -x1}, n_boot=200)  # opposite sign: still together
    assert abs(neg.index["x"].value) < 1e-9


def test_dissociation_large_when_only_one_moves():
    rng = np.random.default_rng(2)
    b0 = rng.normal(0, 1, 40)
    b1 = b0 + 2.0
    x0 = rng.normal(0, 1, 40)
    x1 = x0 + rng.normal(0, 0.05, 40)
    d = dissociation(b0, b1, {"x": x0}, {"x": x1}, n_boot=300)
    assert d.index["x"].value > 0.9 and d.verdict["x"] == "behaviour moves, expression does not"
    e = dissociation(x0, x1, {"x": b0}, {"x": b1}, n_boot=300)
    assert e.index["x"].value < -0.9 and e.verdict["x"] == "expression moves, behaviour does not"


def test_dissociation_bad_inputs():
    a = np.arange(5.0)
    with pytest.raises(ValueError, match="same, non-empty"):
        dissociation(a, a + 1, {}, {})
    with pytest.raises(ValueError, match="same, non-empty"):
        dissociation(a, a + 1, {"x": a}, {"y": a})
    with pytest.raises(ValueError, match="equal lengths"):
        dissociation(a, a[:3], {"x": a}, {"x": a})
    with pytest.raises(ValueError, match="at least 2"):
        dissociation(a[:1], a[:1], {"x": a}, {"x": a}, paired=False)
    with pytest.raises(ValueError, match="all values are NaN"):
        dissociation(a, a + 1, {"x": a * np.nan}, {"x": a})
    assert np.isnan(dissociation_index(0, 0))


def test_lexicon_rates():
    r = lexicon_rates(["I was so afraid and scared of the dark.", "The table has four legs.", ""], "afraid")
    assert r["emotion_words"][0] > 0 and r["target_words"][0] == pytest.approx(100 * 2 / 9)
    assert r["emotion_words"][1] == 0
    assert np.isnan(r["emotion_words"][2])
    assert r["valence"][0] < r["valence"][1] or np.isnan(r["valence"][1])
    with pytest.raises(TypeError):
        lexicon_rates("one string")
    with pytest.raises(ValueError, match="banned-word list"):
        lexicon_rates(["x"], "not-an-emotion")


def test_render_bad_inputs(tiny_llama):
    _, spec = tiny_llama
    with pytest.raises(ValueError, match="rendering"):
        render(spec, planted(), "sideways")
    with pytest.raises(ValueError, match="max_turns"):
        render(spec, planted(), "chat", max_turns=0)
    with pytest.raises(ValueError, match="speaker must be"):
        speaker_tokens(spec, planted(), "chat").positions(2)
    with pytest.raises(ValueError, match="no chat roles"):
        speaker_roles(planted(), "plain")
    with pytest.raises(ValueError, match="outside"):
        span_means(tiny_llama.bridge, spec, [[1, 2, 3]], [[5]], 1, progress=False)
    with pytest.raises(ModelError):
        from emolens.speakers import _locate
        _locate("abc", ["zzz"], "x")


def test_no_spread_means_no_change():
    assert standardised_change([0, 0, 0], [0, 0, 0]) == 0.0
    assert np.isnan(standardised_change([0, 0, 0], [1, 1, 1]))
    d = dissociation(np.arange(10.0), np.arange(10.0) + 3, {"words": np.zeros(10)}, {"words": np.zeros(10)}, n_boot=100)
    assert d.index["words"].value == 1.0 and d.verdict["words"] == "behaviour moves, expression does not"


def test_probe_analyses_on_planted_data():
    """Probes recover planted emotion directions from speaker samples; shuffled labels do not."""
    from emolens.analyses.speakers import Samples, heldout_accuracy, mean_diagonal_cosine

    rng = np.random.default_rng(3)
    emos = ["a", "b", "c", "d"]
    dirs = rng.standard_normal((4, 16)) * 3
    labels = [emos[i % 4] for i in range(80)]
    x = torch.tensor(np.stack([dirs[i % 4] for i in range(80)]) + rng.standard_normal((80, 16)), dtype=torch.float32)
    s = Samples(x, labels, list(range(80)))
    acc = heldout_accuracy(s, emos, torch.zeros((0, 16)), n_shuffles=5, n_boot=100)
    assert acc["accuracy"].value > 0.9 and acc["shuffled_95"] < 0.6
    p = dialogue_probes(x, labels, emos, torch.zeros((0, 16)))
    m = mean_diagonal_cosine(p.vectors, torch.tensor(dirs - dirs.mean(0), dtype=torch.float32), n_boot=100, n_perm=200)
    assert m["matched"].value > 0.9 and m["matched"].p < 0.1
    with pytest.raises(ValueError, match="at least 3"):
        mean_diagonal_cosine(p.vectors[:2], p.vectors[:2])


def test_deflection_traces_read_each_token_of_both_dialogues_of_a_pair(tiny_llama):
    from types import SimpleNamespace

    from emolens.activations import token_residuals
    from emolens.analyses.speakers import deflection_traces

    spec = tiny_llama.spec
    turns = ((0, "I am fine, really."), (1, "Are you sure?"))
    dl = [Dialogue(f"{v}-angry-00", "deflection", ("Sam", "Lee"), ("angry", ""), turns, 1, v, shown="calm",
                   context="Sam is seething.") for v in ("deflect", "open")]
    dl.append(Dialogue("deflect-sad-00", "deflection", ("Sam", "Lee"), ("sad", ""), turns, 1, "deflect"))  # no pair
    dv = torch.randn(2, spec.d_model, generator=torch.Generator().manual_seed(0))
    study = {"targets": ["angry", "sad"], "probes": {"deflect": dv.numpy()}}
    ev = SimpleNamespace(emotions=["calm"])  # the target has no story vector: the deflection vector alone
    rows = deflection_traces(tiny_llama, dl, study, ev, 1, None, n_pairs=3)
    assert [r[0].split(":")[0] for r in rows] == ["deflect-angry-00", "open-angry-00"]
    text = speaker_tokens(spec, dl[0], "plain", None).text
    ids, res = token_residuals(tiny_llama.bridge, spec, text, [1])
    want = torch.nn.functional.cosine_similarity(res[:, 0], dv[0][None].float(), dim=-1)
    assert len(rows[0][1]) == len(ids) and np.allclose(rows[0][2], want.numpy(), atol=1e-5)
