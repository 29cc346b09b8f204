"""Each notebook's headline numbers, with their uncertainties, in ``figures/NN_results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emolens.paths import figures_dir
from emolens.plotting import _plain


def results_path(notebook: str) -> Path:
    prefix = notebook.split("_")[0]
    if not (len(prefix) == 2 and prefix.isdigit()):
        raise ValueError(f"notebook {notebook!r} must start with its two-digit number, e.g. '03_validate_vectors'")
    return figures_dir() / f"{prefix}_results.json"


def write_results(notebook: str, results: dict[str, Any], mode: str = "full") -> Path:
    """Merge ``results`` into the notebook's results file (keys sorted, floats rounded) and return its path.

    ``mode`` ('full' or 'fast') is recorded so that a fast-mode run is never mistaken for the real numbers.
    """
    path = results_path(notebook)
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(_plain(results))
    old["_notebook"], old["_mode"] = notebook, mode
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
    return path


def read_results(notebook: str) -> dict[str, Any]:
    path = results_path(notebook)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook {notebook} first")
    return json.loads(path.read_text())
