"""Provenance: what model, weights, libraries and commit produced a result. Printed atop every notebook."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from typing import Any

from emolens.paths import REPO_ROOT

LIBRARIES = ("emolens", "torch", "transformers", "transformer-lens", "numpy")


def git_commit() -> str:
    """HEAD's hash, with ``+dirty`` when the work tree has uncommitted changes; 'unknown' outside git."""
    try:
        r = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=5)
        head = r.stdout.strip() if r.returncode == 0 else ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(spec: Any | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"git_commit": git_commit(), "python": platform.python_version(),
                            "machine": f"{platform.machine()}, {platform.system()}", "libraries": library_versions()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if spec is not None:
        info.update(model=spec.name, hf_name=spec.hf_name, weight_source=spec.weight_source,
                    weight_sha256=spec.weight_sha256, quantization=spec.quantization, dtype=spec.dtype,
                    device=spec.device, n_layers=spec.n_layers, d_model=spec.d_model)
    return info


def format_provenance(spec: Any | None = None) -> str:
    p = provenance(spec)
    libs = p.pop("libraries")
    lines = [f"{k:>14}: {v}" for k, v in p.items() if v is not None]
    lines.append(f"{'libraries':>14}: " + ", ".join(f"{k} {v}" for k, v in libs.items()))
    return "\n".join(lines)
