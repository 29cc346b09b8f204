"""Where things live: the repository's folders and the cache. Each is read at call time from its environment
variable, so tests and forks can point it elsewhere: ``EMOLENS_DATA`` (default ``data/``), ``EMOLENS_FIGURES``
(default ``figures/``), ``EMOLENS_CACHE`` (default ``~/.cache/emolens``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    return Path(os.environ.get("EMOLENS_DATA", REPO_ROOT / "data"))


def figures_dir() -> Path:
    return Path(os.environ.get("EMOLENS_FIGURES", REPO_ROOT / "figures"))


def cache_dir() -> Path:
    return Path(os.environ.get("EMOLENS_CACHE", Path.home() / ".cache" / "emolens"))
