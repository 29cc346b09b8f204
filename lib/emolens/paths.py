"""Where things live: the repository's folders and the cache (``EMOLENS_CACHE``, default ``~/.cache/emolens``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIGURES_DIR = Path(os.environ.get("EMOLENS_FIGURES", REPO_ROOT / "figures"))


def cache_dir() -> Path:
    """The cache root; read at call time so tests can point it elsewhere."""
    return Path(os.environ.get("EMOLENS_CACHE", Path.home() / ".cache" / "emolens"))
