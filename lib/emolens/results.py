"""Where a notebook's figures and numbers go, keyed by model, and the results file of each notebook.

Only a full run through ``make run`` (which sets ``EMOLENS_COMMIT=1``) writes the committed
``figures/<model>/``; a fast-mode run writes ``reports/fast/<model>/`` and an interactive full run (JupyterLab)
``reports/figures/<model>/``, both git-ignored, so running a notebook never changes committed results.
``EMOLENS_FIGURES`` sets the root for every mode (the tests point it at a temporary folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emolens.paths import REPO_ROOT
from emolens.plotting import _plain, save_figure


def output_dir(model: str, fast: bool) -> Path:
    """The folder a run of ``model`` writes to (see the module docstring)."""
    if not model or model.startswith((".", "/")) or ".." in model:
        raise ValueError(f"model name {model!r} cannot name a folder")
    safe = model.replace("/", "__")  # hub ids such as google/gemma-2-2b-it
    root = os.environ.get("EMOLENS_FIGURES")
    if root:
        return Path(root) / safe
    if fast:
        return REPO_ROOT / "reports" / "fast" / safe
    if os.environ.get("EMOLENS_COMMIT") == "1":
        return REPO_ROOT / "figures" / safe
    return REPO_ROOT / "reports" / "figures" / safe


def _prefix(notebook: str) -> str:
    prefix = notebook.split("_")[0]
    if not (len(prefix) == 2 and prefix.isdigit()):
        raise ValueError(f"notebook {notebook!r} must start with its two-digit number, e.g. '03_validate_vectors'")
    return prefix


class Outputs:
    """A notebook run's outputs: ``out.figure(fig, "classification", numbers)`` writes
    ``<dir>/03_classification.png`` (+ ``.json``); ``out.results({...})`` merges into ``<dir>/03_results.json``."""

    def __init__(self, notebook: str, model: str, fast: bool) -> None:
        self.notebook, self.model, self.fast = notebook, model, fast
        self.prefix = _prefix(notebook)
        self.dir = output_dir(model, fast)

    def figure(self, fig: Any, name: str, data: dict[str, Any] | None = None) -> Path:
        return save_figure(fig, f"{self.prefix}_{name}", data, folder=self.dir)

    @property
    def results_path(self) -> Path:
        return self.dir / f"{self.prefix}_results.json"

    def results(self, results: dict[str, Any]) -> Path:
        """Merge ``results`` into the notebook's results file (keys sorted, floats rounded); the model and the
        mode ('full' or 'fast') are recorded so a fast run is never mistaken for the real numbers."""
        path = self.results_path
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(_plain(results))
        old.update(_notebook=self.notebook, _mode="fast" if self.fast else "full", _model=self.model)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
        return path


def read_results(notebook: str, model: str, committed: bool = True) -> dict[str, Any]:
    """A notebook's committed results for ``model`` (``figures/<model>/NN_results.json``)."""
    path = (REPO_ROOT / "figures" / model.replace("/", "__") if committed else output_dir(model, False)) / \
        f"{_prefix(notebook)}_results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run notebook {notebook} with `make run` first")
    return json.loads(path.read_text())
