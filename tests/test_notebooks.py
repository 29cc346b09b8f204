"""Notebook hygiene, and every notebook executed end to end in fast mode (on the embedded model)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_hygiene(path):
    assert re.fullmatch(r"\d{2}_[a-z0-9]+(_[a-z0-9]+)*\.ipynb", path.name), path.name
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "outputs committed"
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert "EMOLENS_FAST" in "".join(params[0]["source"]), "the parameters cell must read the fast-mode variable"
    first = cells[0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# "), "title cell first"
    title = "".join(first["source"])
    for needed in ("What it shows", "What it needs", "What it produces", "How long"):
        assert needed in title, f"title cell lacks '{needed}'"


GOLDEN = ROOT / "tests" / "golden" / "fast.json"


def _at(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_executes_in_fast_mode_with_golden_numbers(path, tmp_path, monkeypatch):
    """Each notebook runs in fast mode, writes only under the temporary folder, and its key numbers equal the
    committed golden values (dependencies are pinned exactly, so a drift is a change worth seeing).
    EMOLENS_UPDATE_GOLDEN=1 rewrites the golden values from this run instead."""
    sys.path.insert(0, str(ROOT / "tools"))
    from run_notebooks import execute

    monkeypatch.setenv("EMOLENS_FAST", "1")
    monkeypatch.setenv("EMOLENS_FIGURES", str(tmp_path / "figures"))  # never overwrite the real figures
    execute(path, tmp_path / "reports", timeout=1800)
    nb = path.name[:2]
    written = list((tmp_path / "figures").rglob(f"{nb}_*"))
    assert written, "the notebook wrote no figure or results"
    results = json.loads(next(p for p in written if p.name == f"{nb}_results.json").read_text())
    assert results["_mode"] == "fast"
    golden = json.loads(GOLDEN.read_text())
    if os.environ.get("EMOLENS_UPDATE_GOLDEN") == "1":
        golden[nb] = {k: _at(results, k) for k in golden.get(nb, {})}
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        return
    for key, want in golden.get(nb, {}).items():
        got = _at(results, key)
        if isinstance(want, float) or (isinstance(want, list) and all(isinstance(x, float) for x in want)):
            assert got == pytest.approx(want, rel=1e-3, abs=2e-3), key
        else:
            assert got == want, key


@pytest.mark.notebook
def test_ctrl_c_says_interrupted_keeps_the_partial_report_and_exits_nonzero(tmp_path):
    import signal
    import subprocess
    import time

    env = dict(os.environ, EMOLENS_FAST="1", EMOLENS_FIGURES=str(tmp_path / "figures"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "run_notebooks.py"), "--notebooks", "00", "--out",
                             str(tmp_path / "reports")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until a few cells have run, as a person would before pressing Ctrl-C
        seen.append(line)
        if "cell 11/" in line or time.time() > deadline:  # the steered generations: several seconds
            break
    proc.send_signal(signal.SIGINT)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-2000:]
    assert "interrupted by the user" in out
    assert (tmp_path / "reports" / "00_quickstart.ipynb").exists()
