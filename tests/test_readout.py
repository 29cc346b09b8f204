"""Readouts: the batched colon readout equals a direct single run; projections behave."""

from __future__ import annotations

import torch

from emolens.activations import token_residuals
from emolens.readout import colon_activations, project, token_readout


def test_colon_activations_match_single_runs(tiny_any):
    bridge, spec = tiny_any
    msgs = ["I took 8000 mg.", "The dog came home after three long days, finally.", "Hi."]
    got = colon_activations(bridge, spec, msgs, 1)
    for i, m in enumerate(msgs):
        ids, colon = spec.assistant_colon_position([{"role": "user", "content": m}])
        text = spec.format_user_prompt(m)
        ids2, res = token_residuals(bridge, spec, text, [1])
        assert ids2 == ids
        assert torch.allclose(got[i], res[colon, 0], atol=1e-5)


def test_project_cosine_and_dot():
    x = torch.tensor([[3.0, 4.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(project(x, v, "cosine"), torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(project(x, v, "dot"), torch.tensor([[3.0, 4.0]]))


def test_token_readout_is_the_cosine_of_each_tokens_residual(tiny_llama):
    from emolens.activations import token_residuals

    bridge, spec = tiny_llama
    v = torch.randn(3, spec.d_model, generator=torch.Generator().manual_seed(0))
    toks, vals = token_readout(bridge, spec, "The fox sleeps.", v, 1)
    ids, res = token_residuals(bridge, spec, "The fox sleeps.", [1])
    assert toks == [spec.tokenizer.decode([i]) for i in ids]
    want = torch.nn.functional.cosine_similarity(res[:, 0, None, :], v[None], dim=-1)
    assert torch.allclose(vals, want, atol=1e-5)


def test_readout_explorer_callback_without_a_browser(tiny_llama):
    from emolens.display import readout_explorer
    from emolens.provenance import provenance
    from emolens.vectors import build_emotion_vectors

    bridge, spec = tiny_llama
    g = torch.Generator().manual_seed(0)
    ev = build_emotion_vectors(torch.randn(4, 2, spec.d_model, generator=g), torch.ones(4), ["a", "b"] * 2,
                               ["a", "b"], [0, 1], None, provenance=provenance(spec))
    ex = readout_explorer(bridge, spec, ev, "The fox sleeps.")
    assert "a at layer" in ex.initial and ex.initial == ex.html()
    changed = ex.html(emotion="b", layer=0, text="A different text entirely.")
    import re

    shown = re.sub(r"<[^>]+>", "", changed)  # the text as a reader sees it
    assert "b at layer 0" in shown and "A different text entirely." in shown and changed != ex.initial
    ex.controls["emotion"].value = "b"  # the live widget's state is what html() renders
    assert "b at layer" in ex.html()
    box = ex.widget()
    assert box is ex.widget() and len(box.children) == 3
