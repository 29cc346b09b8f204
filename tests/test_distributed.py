"""Data-parallel extraction (emolens.distributed): two gloo processes on the CPU give the single-process result,
with an uneven split and after an interrupted rank resumes; placement across GPUs; bad inputs.

The multi-process tests start real ranks with ``torch.multiprocessing`` (spawn) and the environment variables
``torchrun`` sets, so they exercise the same ``init_ranks`` path as ``torchrun -m emolens.extract_corpus``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from emolens.activations import Pooling, accumulation_dtype
from emolens.distributed import Ranks, ResumeError, cached_only, resume_guard, shard
from emolens.models import ModelError
from emolens.vectors import build_emotion_vectors, neutral_covariance, story_activations
from emolens.vectors.recipe import story_key

POOL = Pooling(start=2)
# Seven texts of very different lengths (one ~20x another), so the two shards differ in size and in count.
TEXTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "She opened the letter, read it twice, and put it back in the drawer without a word. " * 6,
    "He took 1000 mg of it.",
    "Human: What is two plus two?\n\nAssistant: Four. " * 2,
    "A short one, then a longer clause about the warm stove.",
    "The numbers 0123456789 appear here, and then the fox returns to the stove to sleep. " * 3,
    "She read the letter again by the stove.",
]
LABELS = ["calm", "sad", "calm", "happy", "sad", "happy", "calm"]
NEUTRAL = [
    "Human: What time is it?\n\nAssistant: It is four o'clock in the afternoon.",
    "Human: Name a colour.\n\nAssistant: Blue, like the sky over the sea on a clear morning. " * 3,
    "Human: Count to five.\n\nAssistant: One, two, three, four, five.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cache: str, out: str, fail_after: int | None) -> None:
    """One rank, set up as torchrun would set it up; rank 1 raises after ``fail_after`` chunks when given."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), EMOLENS_CACHE=cache)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from safetensors.torch import save_file

    from emolens import distributed
    from emolens.models import tiny_model

    bridge, spec = tiny_model("llama", seed=0)
    calls = [0]
    real = distributed.pooled_means

    def counted(*args, **kwargs):
        calls[0] += 1
        if fail_after is not None and rank == 1 and calls[0] > fail_after:
            Path(out, "crashed1").write_text("rank 1 stopped on purpose")
            raise RuntimeError("simulated crash of rank 1")
        return real(*args, **kwargs)

    distributed.pooled_means = counted
    ranks = distributed.init_ranks("gloo")
    try:
        means, counts = story_activations(bridge, spec, TEXTS, None, POOL, batch_size=2, chunk_size=1,
                                          progress=False, ranks=ranks)
        nc = neutral_covariance(bridge, spec, NEUTRAL, None, batch_size=2, progress=False, ranks=ranks)
        Path(out, f"calls{rank}.json").write_text(json.dumps(calls[0]))
        if rank == 0:
            save_file({"means": means, "counts": counts, "mean": nc["mean"], "cov": nc["cov"],
                       "n_tokens": torch.tensor([nc["n_tokens"]])}, str(Path(out, "rank0.safetensors")))
    finally:
        distributed.close_ranks(ranks)


def _spawn(tmp: Path, fail_after: int | None = None) -> dict[str, torch.Tensor]:
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    out = tmp / "out"
    out.mkdir(exist_ok=True)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp / "cache"), str(out), fail_after), nprocs=2,
                       join=True, start_method="spawn")
    return load_file(str(out / "rank0.safetensors"))


@pytest.fixture(scope="module")
def single(tiny_llama, tmp_path_factory):
    """The single-process reference, in its own cache folder."""
    bridge, spec = tiny_llama
    root = tmp_path_factory.mktemp("single")
    means, counts = story_activations(bridge, spec, TEXTS, None, POOL, batch_size=3, progress=False,
                                      folder=root / "activations")
    nc = neutral_covariance(bridge, spec, NEUTRAL, None, batch_size=3, progress=False, folder=root / "neutral")
    return {"means": means, "counts": counts, "mean": nc["mean"], "cov": nc["cov"], "n_tokens": nc["n_tokens"]}


def _vectors(r: dict[str, torch.Tensor], n_layers: int):
    return build_emotion_vectors(r["means"], r["counts"], LABELS, ["calm", "sad", "happy"], list(range(n_layers)),
                                 r["cov"], variance_fraction=0.5).vectors


def _assert_same(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], n_layers: int) -> None:
    assert torch.equal(got["counts"], ref["counts"])
    torch.testing.assert_close(got["means"], ref["means"], rtol=1e-5, atol=1e-5)
    assert int(got["n_tokens"]) == ref["n_tokens"]
    torch.testing.assert_close(got["mean"], ref["mean"], rtol=1e-5, atol=1e-5)
    scale = float(ref["cov"].abs().max())
    torch.testing.assert_close(got["cov"], ref["cov"], rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(_vectors(got, n_layers), _vectors(ref, n_layers), rtol=1e-5, atol=1e-5)


def test_shard_is_a_balanced_partition():
    lengths = [500, 10, 12, 9, 300, 8, 11]
    parts = shard(lengths, 2)
    assert sorted(i for p in parts for i in p) == list(range(7))
    loads = [sum(lengths[i] for i in p) for p in parts]
    assert max(loads) == 500 and len(parts[0]) != len(parts[1])  # the longest alone; the rest together
    assert shard(lengths, 2) == parts  # every rank computes the same split
    assert shard([5, 5], 4) == [[0], [1], [], []]  # more ranks than texts: some shards are empty


def test_reduce_rows_assembles_in_slices(monkeypatch):
    from emolens import distributed

    monkeypatch.setattr(distributed, "REDUCE_BYTES", 2 * 2 * 3 * 4)  # two rows per slice: several slices
    rows = torch.arange(5 * 2 * 3, dtype=torch.float32).view(5, 2, 3)
    mine = [4, 0, 2, 1, 3]
    out = distributed.reduce_rows(5, mine, rows, Ranks())
    for k, i in enumerate(mine):
        assert torch.equal(out[i], rows[k])
    empty = distributed.reduce_rows(3, [], torch.zeros((0, 2, 3)), Ranks())  # a rank that owns no row
    assert torch.equal(empty, torch.zeros((3, 2, 3)))


def test_two_gloo_ranks_equal_one_process(tmp_path, single, tiny_llama):
    bridge, spec = tiny_llama
    lengths = [len(spec.encode(t)) for t in TEXTS]
    parts = shard(lengths, 2)
    assert len(parts[0]) != len(parts[1]) and max(lengths) > 10 * min(lengths)  # the split is uneven
    got = _spawn(tmp_path)
    _assert_same(got, single, spec.n_layers)
    # rank 0 stored the reduced result under the single-process key, where notebooks look for it
    key = story_key(spec, TEXTS, list(range(spec.n_layers)), POOL, "resid_post")
    hit = cached_only("activations", key, tmp_path / "cache" / "activations")
    assert hit is not None and torch.equal(hit[0]["means"], got["means"])
    assert not list((tmp_path / "cache" / "activations" / "checkpoints").glob("*chunk*"))  # checkpoints dropped


def test_interrupted_rank_resumes(tmp_path, single, tiny_llama):
    import torch.multiprocessing as mp

    bridge, spec = tiny_llama
    # rank 1 crashes; rank 0 then fails in its all-reduce ("connection closed"): either may be reported first
    with pytest.raises(mp.ProcessRaisedException):
        _spawn(tmp_path, fail_after=1)
    assert (tmp_path / "out" / "crashed1").exists()
    saved = list((tmp_path / "cache" / "activations" / "checkpoints").glob("*chunk*"))
    assert saved  # the chunks finished before the crash are on disk
    got = _spawn(tmp_path)
    _assert_same(got, single, spec.n_layers)
    mine = len(shard([len(spec.encode(t)) for t in TEXTS], 2)[1])
    calls = json.loads((tmp_path / "out" / "calls1.json").read_text())
    assert calls == mine - 1  # rank 1 recomputed only what it had not saved (chunk size 1)


def test_world_size_mismatch_with_checkpoints_is_refused(tmp_path, tiny_llama):
    bridge, spec = tiny_llama
    layers = list(range(spec.n_layers))
    key = story_key(spec, TEXTS, layers, POOL, "resid_post")
    folder = tmp_path / "activations" / "checkpoints"
    resume_guard(folder, key, world_size=2, chunk_size=1, tags=["feedbeef"], refresh=False)  # a 2-rank run's
    (folder / "feedbeef-chunk00000.safetensors").write_bytes(b"left by the 2-rank run")
    with pytest.raises(ResumeError, match=r"made by 2 rank\(s\) with chunk size 1.*1 rank\(s\).*--refresh"):
        story_activations(bridge, spec, TEXTS, None, POOL, chunk_size=1, progress=False,
                          folder=tmp_path / "activations", ranks=Ranks())
    means, _ = story_activations(bridge, spec, TEXTS, None, POOL, chunk_size=1, progress=False,
                                 folder=tmp_path / "activations", ranks=Ranks(), refresh=True)
    assert not (folder / "feedbeef-chunk00000.safetensors").exists()  # discarded, as refresh says
    assert means.shape == (len(TEXTS), spec.n_layers, spec.d_model)


def test_single_rank_path_equals_plain_path(tmp_path, single, tiny_llama):
    """The entry point's single-process run (a Ranks of one) is the notebooks' result."""
    bridge, spec = tiny_llama
    means, counts = story_activations(bridge, spec, TEXTS, None, POOL, batch_size=2, chunk_size=2,
                                      progress=False, folder=tmp_path / "activations", ranks=Ranks())
    nc = neutral_covariance(bridge, spec, NEUTRAL, None, batch_size=1, progress=False, folder=tmp_path / "neutral",
                            ranks=Ranks())
    _assert_same({"means": means, "counts": counts, "mean": nc["mean"], "cov": nc["cov"],
                  "n_tokens": torch.tensor([nc["n_tokens"]])}, single, spec.n_layers)


def test_float32_accumulation_agrees_with_float64(tiny_llama):
    from emolens.activations import neutral_statistics

    bridge, spec = tiny_llama
    a = neutral_statistics(bridge, spec, NEUTRAL + TEXTS, batch_size=2, progress=False, accumulate="float64")
    b = neutral_statistics(bridge, spec, NEUTRAL + TEXTS, batch_size=2, progress=False, accumulate="float32")
    torch.testing.assert_close(b["cov"], a["cov"], rtol=1e-4, atol=1e-5 * float(a["cov"].abs().max()))
    assert accumulation_dtype("float32") == "float64" and accumulation_dtype("bfloat16") == "float32"


# ---- bad inputs ------------------------------------------------------------------------------------------------
def test_unknown_dtypes_are_refused(tiny_llama):
    from emolens.activations import neutral_statistics
    from emolens.extract_corpus import choose_dtype
    from emolens.models import load_model

    with pytest.raises(ModelError, match=r"dtype 'float8' not allowed.*float32.*bfloat16"):
        load_model(dtype="float8")
    with pytest.raises(ValueError, match=r"--dtype 'fp8' not allowed.*auto"):
        choose_dtype("fp8", "smollm2-135m-instruct", cuda=False)
    with pytest.raises(ValueError, match=r"accumulate 'float16' not allowed.*float64.*float32"):
        neutral_statistics(*tiny_llama, NEUTRAL, progress=False, accumulate="float16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal; this machine has CUDA")
def test_device_map_without_cuda_is_refused():
    from emolens.models import load_model

    with pytest.raises(ModelError, match=r"device_map='auto' splits a model across CUDA GPUs.*none.*device='cpu'"):
        load_model(device_map="auto")
    with pytest.raises(ModelError, match=r"exclusive"):
        load_model(device="cpu", device_map="auto")
    with pytest.raises(ModelError, match=r"max_memory only applies with a device_map"):
        load_model(max_memory={0: "1GiB"})


def test_device_map_targets_are_checked(monkeypatch):
    """What a GPU machine would be told, checked here by presenting two (fake) GPUs to the validator."""
    from emolens.models.load import check_device_map, check_placement

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device_map("auto", None) == "auto"
    assert check_device_map({"model.layers.0": 0, "lm_head": "cuda:1"}, None)
    with pytest.raises(ModelError, match=r"'cpu' not allowed: targets must be GPUs.*offload"):
        check_device_map({"model.layers.0": 0, "lm_head": "cpu"}, None)
    with pytest.raises(ModelError, match=r"'cuda:3': only 2 CUDA device"):
        check_device_map({"lm_head": "cuda:3"}, None)
    with pytest.raises(ModelError, match=r"'fastest' not allowed: use one of \('auto', 'balanced'"):
        check_device_map("fastest", None)

    class Offloaded:
        hf_device_map = {"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"}

    with pytest.raises(ModelError, match=r"did not fit on the GPUs; 2 module\(s\) were offloaded"):
        check_placement(Offloaded(), "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal; this machine has CUDA")
def test_nccl_without_cuda_is_refused(monkeypatch):
    from emolens.distributed import init_ranks

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"'nccl' needs CUDA.*'gloo'"):
        init_ranks("nccl")
    with pytest.raises(ValueError, match=r"backend 'mpi' not allowed.*gloo.*nccl"):
        init_ranks("mpi")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match=r"RANK='two'"):
        init_ranks("gloo")


def test_dtype_policy(monkeypatch):
    from emolens.defaults import model_dtype
    from emolens.extract_corpus import choose_dtype

    monkeypatch.delenv("EMOLENS_DTYPE", raising=False)
    assert choose_dtype("auto", "smollm2-135m-instruct", cuda=False) == model_dtype(fast=False)  # notebooks' caches
    monkeypatch.setenv("EMOLENS_DTYPE", "float32")
    assert choose_dtype("auto", "smollm2-135m-instruct", cuda=False) == "float32"
    assert choose_dtype("auto", "meta-llama/Llama-3.1-8B-Instruct", cuda=False) == "bfloat16"  # large: bf16
    assert choose_dtype("float16", "meta-llama/Llama-3.1-8B-Instruct", cuda=False) == "float16"  # as asked


def test_layers_argument_is_checked():
    from emolens.extract_corpus import parse_layers

    assert parse_layers("all", 30, 19) is None and parse_layers("probe", 30, 19) == [19]
    assert parse_layers("3,5,10-12", 30, 19) == [3, 5, 10, 11, 12]
    with pytest.raises(ValueError, match=r"'x' is not a layer; allowed: 'all', 'probe'.*0\.\.29"):
        parse_layers("1,x", 30, 19)


def test_entry_point_refuses_bad_arguments(capsys, monkeypatch):
    from emolens.extract_corpus import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err
    if not torch.cuda.is_available():  # refused before any weights are read
        assert main(["--device-map", "auto"]) == 2
        assert "splits a model across CUDA GPUs, and this machine has none" in capsys.readouterr().err


# ---- models split over GPUs ----------------------------------------------------------------------------------
def _two_gpu_tiny():
    """The tiny Llama with its embedding and first blocks on GPU 0 and the rest on GPU 1 (Accelerate dispatch),
    booted into a bridge the way load_model boots a device_map model, and the same weights on the CPU."""
    import copy

    from accelerate import dispatch_model
    from transformer_lens.model_bridge import TransformerBridge

    from emolens.models import ModelSpec, tiny_model
    from emolens.models.tiny import _hf_model, tiny_tokenizer

    ref = tiny_model("llama", seed=0)
    tok = tiny_tokenizer(chat=True)
    torch.manual_seed(0)
    hf = _hf_model("llama", len(tok), 4, 64).eval()
    hf.config.architectures = ["LlamaForCausalLM"]
    cpu_copy = copy.deepcopy(hf)
    device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1,
                  "model.layers.3": 1, "model.norm": 1, "model.rotary_emb": 0, "lm_head": 1}
    hf = dispatch_model(hf, device_map=device_map)
    bridge = TransformerBridge.boot_transformers("emolens/tiny-llama", hf_model=hf, tokenizer=tok, device=None)
    bridge.eval()
    spec = ModelSpec(**{**ref.spec.__dict__, "device": str(bridge.cfg.device), "tokenizer": bridge.tokenizer})
    cpu_bridge = TransformerBridge.boot_transformers("emolens/tiny-llama", hf_model=cpu_copy, tokenizer=tok,
                                                     device="cpu")
    cpu_bridge.eval()
    return (bridge, spec), (cpu_bridge, ref.spec)


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason=f"needs 2 CUDA devices to put blocks on different GPUs; this machine has "
                           f"{torch.cuda.device_count()} (the CPU-only machine runs the refusal tests instead)")
def test_steering_and_pooling_with_blocks_on_two_gpus():
    from emolens.activations import pooled_means
    from emolens.interventions import ablation, steering

    (gpu, gspec), (cpu, cspec) = _two_gpu_tiny()
    assert gpu.cfg.n_devices == 2
    direction = torch.randn(64)
    ids = gspec.encode(TEXTS[1])
    for layer in (1, 3):  # one block on each GPU: the vector must be moved to each block's device
        with steering(gpu, gspec, direction, layer, alpha=0.5, norm=10.0):
            got = gpu(torch.tensor([ids], device=gspec.device)).float().cpu()
        with steering(cpu, cspec, direction, layer, alpha=0.5, norm=10.0):
            want = cpu(torch.tensor([ids])).float()
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        with ablation(gpu, gspec, direction, layer):
            gpu(torch.tensor([ids], device=gspec.device))
    # pooled readouts across both GPUs (the pooled index is built per device) equal the CPU's
    a, _ = pooled_means(gpu, gspec, TEXTS, None, POOL, progress=False)
    b, _ = pooled_means(cpu, cspec, TEXTS, None, POOL, progress=False)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
