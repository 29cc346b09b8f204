"""One cache helper for every long computation: content-hash keys, safetensors + JSON sidecar, verified loads.

A result is stored as ``<folder>/<key>.safetensors`` with ``<key>.json`` beside it; the sidecar records what
made the result (the key's inputs) and the sha256 of the tensor file, checked on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


_DIGESTS = ("sha256", "meta_sha256")


def meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of a sidecar's content (its digests left out): names, layers, settings, provenance. A sidecar edited
    after writing (an emotion list reordered, a layer changed) no longer matches, so its tensors are refused."""
    body = {k: v for k, v in meta.items() if k not in _DIGESTS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def save_tensors(path: Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors) and its sidecar atomically: a crash never leaves a half-written pair."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    side = json.loads(json.dumps(dict(meta, tensors=sorted(tensors)), default=str))  # as it will read back
    side.update(sha256=file_sha256(tmp), meta_sha256=meta_digest(side))
    side_path = path.with_suffix(".json")
    side_tmp = side_path.with_name(side_path.name + ".tmp")
    side_tmp.write_text(json.dumps(side, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)
    os.replace(side_tmp, side_path)


def load_tensors(path: Path, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a tensor file and its sidecar.

    The sidecar's own digest is always checked (cheap), so names or settings edited after writing are refused.
    With ``verify`` the tensor file's sha256 must match too; ``verify=False`` skips only that re-hash of the
    tensor bytes (a file corrupted on disk then loads as whatever it now holds).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    side_path = path.with_suffix(".json")
    if not path.exists() or not side_path.exists():
        raise CacheError(f"{path}: tensor file or its sidecar {side_path.name} is missing")
    try:
        meta = json.loads(side_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{side_path}: sidecar is not valid JSON ({e}); it was truncated or edited: delete "
                         f"{path.name} and {side_path.name} to recompute") from None
    if not isinstance(meta, dict) or meta.get("meta_sha256") != meta_digest(meta):
        raise CacheError(f"{side_path}: sidecar does not match its own digest (written by an older emolens, or edited "
                         f"after writing: names and settings can no longer be trusted); delete both files to recompute")
    if verify and file_sha256(path) != meta.get("sha256"):
        raise CacheError(f"{path}: content does not match the sha256 in {side_path.name}; delete both to recompute")
    try:
        # clone: load_file may map the file, and a later overwrite of it must not change returned tensors
        tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError) as e:
        raise CacheError(f"{path}: unreadable tensor file ({e}); delete it and {side_path.name} to recompute") from None
    if sorted(tensors) != meta.get("tensors"):
        raise CacheError(f"{path}: holds tensors {sorted(tensors)}, its sidecar lists {meta.get('tensors')}")
    return tensors, meta


Check = Callable[[dict[str, Any], dict[str, Any]], None]


def cached(kind: str, key_inputs: dict[str, Any], compute: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
           folder: Path | None = None, refresh: bool = False,
           check: Check | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``compute()``'s (tensors, meta), stored under a key hashed from ``key_inputs``.

    A stored result whose file fails verification, whose sidecar's key differs, or that fails ``check`` (which
    raises on a wrong result, e.g. a row count that does not match the inputs) is recomputed, never used; a
    freshly computed result that fails ``check`` raises and is never stored.
    """
    folder = Path(folder or cache_dir() / kind)
    path = folder / f"{content_hash(key_inputs)}.safetensors"
    if not refresh and path.exists():
        try:
            tensors, meta = load_tensors(path)
            if json.loads(json.dumps(key_inputs, default=str)) != meta.get("key_inputs"):
                raise CacheError(f"{path}: made with other settings")
            if check:
                check(tensors, meta)
            return tensors, meta
        except (CacheError, ValueError):
            pass
    tensors, meta = compute()
    if check:
        check(tensors, meta)
    save_tensors(path, tensors, dict(meta, key_inputs=key_inputs))
    return load_tensors(path, verify=False)
