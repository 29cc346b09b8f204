"""One cache helper for every long computation: content-hash keys, safetensors + JSON sidecar, verified loads.

A result is stored as ``<folder>/<key>.safetensors`` with ``<key>.json`` beside it; the sidecar records what
made the result (the key's inputs) and the sha256 of the tensor file, checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from emolens.paths import cache_dir


def content_hash(obj: Any) -> str:
    """A stable sha256 of a JSON-able object (dict keys sorted), shortened to 16 hex digits."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


class CacheError(RuntimeError):
    """A cached file is missing, truncated or does not match its sidecar."""


def save_tensors(path: Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors) and its sidecar atomically: a crash never leaves a half-written pair."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    side = dict(meta, sha256=file_sha256(tmp), tensors=sorted(tensors))
    side_path = path.with_suffix(".json")
    side_tmp = side_path.with_name(side_path.name + ".tmp")
    side_tmp.write_text(json.dumps(side, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)
    os.replace(side_tmp, side_path)


def load_tensors(path: Path, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a tensor file and its sidecar; with ``verify`` the file's sha256 must match the sidecar."""
    from safetensors.torch import load_file

    path = Path(path)
    side_path = path.with_suffix(".json")
    if not path.exists() or not side_path.exists():
        raise CacheError(f"{path}: tensor file or its sidecar {side_path.name} is missing")
    meta = json.loads(side_path.read_text())
    if verify and file_sha256(path) != meta.get("sha256"):
        raise CacheError(f"{path}: content does not match the sha256 in {side_path.name}; delete both to recompute")
    # clone: load_file may map the file, and a later overwrite of it must not change returned tensors
    return {k: v.clone() for k, v in load_file(str(path)).items()}, meta


def cached(kind: str, key_inputs: dict[str, Any], compute: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
           folder: Path | None = None, refresh: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``compute()``'s (tensors, meta), stored under a key hashed from ``key_inputs``.

    A stored result whose file fails verification is recomputed, never silently used.
    """
    folder = Path(folder or cache_dir() / kind)
    path = folder / f"{content_hash(key_inputs)}.safetensors"
    if not refresh and path.exists():
        try:
            return load_tensors(path)
        except CacheError:
            pass
    tensors, meta = compute()
    save_tensors(path, tensors, dict(meta, key_inputs=key_inputs))
    return load_tensors(path, verify=False)
