"""save_figure: the one way figures reach ``figures/``, with the house style and deterministic bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emolens.paths import figures_dir

# Paper cluster colours (Figure 6), used wherever emotions are coloured by cluster.
CLUSTER_COLOURS = {
    "Exuberant Joy": "#2ca02c", "Peaceful Contentment": "#17becf", "Compassionate Gratitude": "#1f77b4",
    "Competitive Pride": "#e377c2", "Playful Amusement": "#9467bd", "Depleted Disengagement": "#bcbd22",
    "Vigilant Suspicion": "#7f7f7f", "Hostile Anger": "#ff7f0e", "Fear and Overwhelm": "#8c564b",
    "Despair and Shame": "#d62728",
}

HOUSE_STYLE = {"figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10,
               "axes.spines.top": False, "axes.spines.right": False, "axes.grid": False,
               "svg.hashsalt": "emolens", "figure.constrained_layout.use": True}


def use_house_style() -> None:
    import matplotlib

    matplotlib.rcParams.update(HOUSE_STYLE)


def save_figure(fig: Any, name: str, data: dict[str, Any] | None = None, folder: Path | None = None) -> Path:
    """Write ``<folder>/<name>.png`` (no timestamp or software tag, so identical inputs give identical bytes)
    and, when given, the small JSON of numbers behind it as ``<folder>/<name>.json``. Notebooks call it through
    :class:`emolens.results.Outputs`, which picks the folder by model and mode."""
    if not name or "/" in name or name.endswith(".png"):
        raise ValueError(f"figure name {name!r}: give a bare name like '03_logit_lens'")
    folder = Path(folder) if folder is not None else figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, format="png", metadata={"Software": None})
    if data is not None:
        (folder / f"{name}.json").write_text(json.dumps(_plain(data), indent=1, sort_keys=True) + "\n")
    return path


def _plain(x: Any) -> Any:
    """Tensors and numpy values as plain JSON, floats rounded to 6 significant digits for stable diffs."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float):
        return float(f"{x:.6g}")
    return x
