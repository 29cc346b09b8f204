"""The vectors artifact and its methods: steering that carries its norm, ablation, held-out scoring,
load_or_build, and the committed default vectors."""

from __future__ import annotations

import time

import pytest
import torch

from emolens.activations import Pooling, pooled_means
from emolens.interventions import steering
from emolens.provenance import provenance
from emolens.vectors import EmotionVectors, build_emotion_vectors, committed_path, load_or_build, vectors_key


def _ev(spec, layers=(0, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(8, len(layers), spec.d_model, generator=g)
    cov = torch.stack([torch.cov(torch.randn(100, spec.d_model, generator=g).T) for _ in layers])
    return build_emotion_vectors(means, torch.ones(8), ["a", "b", "c", "d"] * 2, ["a", "b", "c", "d"], list(layers),
                                 cov, 0.5, provenance=provenance(spec), residual_norms=torch.tensor([3.0, 5.0]),
                                 settings={"pooling": Pooling(start=0).as_dict()})


def _resid(bridge, layer, text_ids):
    out = {}
    with bridge.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", lambda r, hook: out.setdefault("r", r.clone()))]):
        bridge(text_ids)
    return out["r"]


def test_steer_uses_the_vector_and_norm_of_each_layer(tiny_llama):
    bridge, spec = tiny_llama
    ev = _ev(spec)
    ids = torch.tensor([spec.encode("The fox sleeps by the stove.")])
    with steering(bridge, spec, ev.vectors[1, 1], 1, 0.2, 5.0):
        want = _resid(bridge, 1, ids)
    with ev.steer((bridge, spec), "b", alpha=0.2, layers=1):
        got = _resid(bridge, 1, ids)
    assert torch.allclose(got, want)
    base = _resid(bridge, 1, ids)
    with ev.steer((bridge, spec), "b", alpha=0.0, layers=[0, 1]):  # alpha 0: exactly the unsteered model
        assert torch.equal(_resid(bridge, 1, ids), base)
    other = _ev(spec)
    other.provenance["model"] = "another-model"
    with pytest.raises(ValueError, match="another-model"):
        with other.steer((bridge, spec), "b", alpha=0.1, layers=1):
            pass
    with pytest.raises(ValueError, match="say which"):
        with ev.steer((bridge, spec), "b", alpha=0.1):
            pass


def test_ablate_zeroes_the_emotions_readout_at_that_layer(tiny_llama):
    bridge, spec = tiny_llama
    ev = _ev(spec)
    ids = torch.tensor([spec.encode("The fox sleeps by the stove, and the cat watches.")])
    with ev.ablate((bridge, spec), ["a", "c"], layers=1):
        r = _resid(bridge, 1, ids)[0]
    v = ev.at(1)[[0, 2]]
    assert (r @ v.T).abs().max() < 1e-3 * r.norm(dim=-1).max()
    assert (_resid(bridge, 1, ids)[0] @ v.T).abs().max() > 1e-2  # and the hooks are gone afterwards


def test_score_texts_is_the_held_out_scoring(tiny_llama):
    bridge, spec = tiny_llama
    ev = _ev(spec)
    texts = ["The fox sleeps by the stove.", "Tiny."]
    got = ev.score_texts((bridge, spec), texts, 1)
    means, _ = pooled_means(bridge, spec, texts, [1], Pooling(start=0), progress=False)
    x = means[:, 0] - ev.centre[1]
    x = x - (x @ ev.neutral_pcs[1].T) @ ev.neutral_pcs[1]
    want = torch.nn.functional.cosine_similarity(x[:, None], ev.at(1)[None], dim=-1)
    assert torch.allclose(torch.as_tensor(got, dtype=torch.float32), want, atol=1e-5)


def test_load_or_build_builds_once_then_hits_the_cache(tiny_llama, isolated_cache, monkeypatch):
    import emolens.vectors.artifact as artifact

    model = tiny_llama
    built = []
    real = artifact.corpus_activations
    monkeypatch.setattr(artifact, "corpus_activations", lambda *a, **k: built.append(1) or real(*a, **k))
    ev = load_or_build(model, emotions=["afraid", "calm"], layers=[1], neutral_limit=8, progress=False)
    again = load_or_build(model, emotions=["afraid", "calm"], layers=[1], neutral_limit=8, progress=False)
    assert built == [1] and torch.equal(ev.vectors, again.vectors)
    assert ev.settings["key"] == vectors_key(model.spec, ["afraid", "calm"], [1], neutral_limit=8)
    assert torch.isfinite(ev.residual_norms).all() and ev.model == model.spec.name
    load_or_build(model, emotions=["afraid", "calm"], layers=[1], neutral_limit=9, progress=False)
    assert built == [1, 1]  # another setting: another key, never the cached vectors


@pytest.mark.notebook
def test_committed_default_vectors_load_fast_and_match_the_current_recipe():
    from emolens.models import DEFAULT_MODEL, load_model

    path = committed_path(DEFAULT_MODEL)
    assert path.exists(), f"{path} is missing: make run writes it (notebook 02)"
    t = time.perf_counter()
    ev = EmotionVectors.load(path, expect_model=DEFAULT_MODEL)
    load_seconds = time.perf_counter() - t
    from emolens.defaults import corpus, model_dtype

    model = load_model(DEFAULT_MODEL)  # float32; the committed file was extracted in the full runs' dtype
    key = vectors_key(model.spec, "all", [model.spec.probe_layer], dtype=model_dtype(fast=False))
    assert ev.settings["key"] == key, "the committed vectors were made from another corpus or settings: make run"
    assert key["corpus"] == corpus() == "v2"
    assert ev.vectors.shape == (171, 1, model.spec.d_model) and torch.isfinite(ev.residual_norms).all()
    assert load_or_build(model).settings["key"] == key  # served from the committed file, no extraction
    print(f"committed vectors loaded in {load_seconds:.3f} s")
