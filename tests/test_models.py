"""Model loading, specs, chat formatting and the Assistant-colon position, on tiny models (offline)."""

from __future__ import annotations

import pytest

from emolens.models import EMBEDDED, ModelError, default_probe_layer, load_model, tiny_model


def test_tiny_models_build_and_run(tiny_any):
    import torch

    bridge, spec = tiny_any
    ids = spec.encode("Hello there, fox.")
    logits = bridge(torch.tensor([ids]))
    assert logits.shape == (1, len(ids), len(spec.tokenizer))
    assert spec.probe_layer == default_probe_layer(spec.n_layers)
    # the bridge computes what the HF model it wraps computes
    hf_logits = bridge.original_model(torch.tensor([ids])).logits
    assert torch.allclose(logits, hf_logits, atol=1e-4)


def test_tiny_model_is_deterministic_in_seed():
    import torch

    (b1, s1), (b2, _), (b3, _) = tiny_model("gpt2", seed=3), tiny_model("gpt2", seed=3), tiny_model("gpt2", seed=4)
    ids = torch.tensor([s1.encode("same input")])
    assert torch.equal(b1(ids), b2(ids)) and not torch.equal(b1(ids), b3(ids))


def test_probe_layer_is_about_two_thirds():
    assert default_probe_layer(30) == 19 and default_probe_layer(18) == 11 and default_probe_layer(3) == 1


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_assistant_colon_position(arch):
    _, spec = tiny_model(arch)
    msgs = [{"role": "user", "content": "My dog is missing."}, {"role": "assistant", "content": "Check the park."}]
    ids, colon = spec.assistant_colon_position(msgs)
    head = spec.tokenizer.decode(ids[: colon + 1])
    if spec.has_chat_template:
        assert head.endswith("<|im_start|>assistant\n")
    else:
        assert head.endswith("Assistant:")
    # with a generation prompt the colon is the last token of the prompt
    ids2, colon2 = spec.assistant_colon_position(msgs[:1])
    assert colon2 == len(ids2) - 1 and ids2 == ids[: len(ids2)]
    with pytest.raises(ModelError, match="out of range"):
        spec.assistant_colon_position(msgs, turn=3)


def test_multi_turn_colon_picks_requested_turn(tiny_gemma):
    _, spec = tiny_gemma
    msgs = [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "No."}]
    ids, first = spec.assistant_colon_position(msgs, turn=0)
    _, last = spec.assistant_colon_position(msgs, turn=-1)
    assert first < last
    assert spec.tokenizer.decode(ids[first + 1: first + 8]).strip().startswith("Yes")


def test_plain_format_is_the_papers():
    _, spec = tiny_model("gpt2")
    text = spec.format_user_prompt("Hi.")
    assert text == "Human: Hi.\n\nAssistant:"
    with pytest.raises(ModelError, match="role"):
        spec.format_chat([{"role": "narrator", "content": "x"}])


def test_layer_check_lists_allowed():
    _, spec = tiny_model("llama")
    assert spec.check_layer(-1) == spec.n_layers - 1
    with pytest.raises(ModelError, match="allowed 0..3"):
        spec.check_layer(4)


def test_unknown_names_and_dtypes_are_clear_errors():
    with pytest.raises(ModelError, match="unknown model 'gpt-5'.*smollm2-135m-instruct"):
        load_model("gpt-5")
    with pytest.raises(ModelError, match="dtype 'int8' not allowed"):
        load_model("smollm2-135m-instruct", dtype="int8")
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        tiny_model("mamba")
    with pytest.raises(ModelError, match="non-empty string"):
        load_model("")


def test_offline_hub_model_gives_actionable_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)  # read at import time, so set it where it lives
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="(?s)HF_HUB_OFFLINE=1 is set.*embedded model"):
        load_model("no-such-org/no-such-model")


def test_embedded_registry_is_consistent():
    for m in EMBEDDED.values():
        assert len(m.packages) == len(m.members) >= 1
        assert len(m.gguf_sha256) == 64
        assert all("==" in p for p in m.packages)
    q = EMBEDDED["qwen2.5-coder-1.5b-instruct"]
    assert len(q.packages) == 22 and q.members[9].endswith("part10.bin") and q.store_dtype == "bfloat16"
    g = EMBEDDED["gemma-3-270m"]
    assert g.members[0].endswith(".part00") and g.architectures == ("Gemma3ForCausalLM",)
