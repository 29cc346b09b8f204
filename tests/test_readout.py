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


def test_token_readout_lengths(tiny_llama):
    bridge, spec = tiny_llama
    toks, vals = token_readout(bridge, spec, "The fox sleeps.", torch.randn(3, spec.d_model), 1)
    assert len(toks) == vals.shape[0] and vals.shape[1] == 3
