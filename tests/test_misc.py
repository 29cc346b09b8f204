"""Stats, classification, figures and results: small pure functions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emolens.analyses.validation import loo_centroid_scores, topk_accuracy
from emolens.stats import bootstrap, correlation, random_directions, rank_of_true


def test_correlation_ci_and_permutation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    est = correlation(x, y, n_boot=300, n_perm=300)
    assert est.low < 1 / np.sqrt(2) < est.high and est.p < 0.01
    null = correlation(x, rng.normal(size=200), n_boot=300, n_perm=300)
    assert null.p > 0.01


def test_bootstrap_mean_ci_covers_truth():
    x = np.random.default_rng(1).normal(loc=3.0, size=500)
    est = bootstrap(np.mean, x, n_boot=500)
    assert est.low < 3.0 < est.high


def test_random_directions_are_unit():
    r = random_directions(5, 16)
    assert np.allclose(np.linalg.norm(r, axis=1), 1)


def test_topk_and_ranks():
    s = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert topk_accuracy(s, [1, 2], 1) == 0.5 and topk_accuracy(s, [1, 2], 2) == 1.0
    assert rank_of_true(s, [1, 2]).tolist() == [1, 2]


def test_loo_centroids_separate_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    labels = np.repeat(np.arange(3), 10)
    x = centres[labels] + rng.normal(size=(30, 8))
    assert topk_accuracy(loo_centroid_scores(x, labels, 3), labels, 1) > 0.9


def test_save_figure_is_deterministic(isolated_cache):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emolens.plotting import save_figure

    def draw():
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [3, 1, 2])
        return fig

    p1 = save_figure(draw(), "99_test", {"x": np.array([1.23456789])})
    b1 = p1.read_bytes()
    p2 = save_figure(draw(), "99_test")
    assert p2.read_bytes() == b1
    assert json.loads((p1.parent / "99_test.json").read_text()) == {"x": [1.23457]}
    with pytest.raises(ValueError, match="bare name"):
        save_figure(draw(), "figures/x.png")


def test_results_writer_merges_and_records_mode_and_model(isolated_cache):
    from emolens.results import Outputs

    out = Outputs("03_validate_vectors", "some-model", fast=True)
    out.results({"a": 1.0})
    out.results({"b": np.float32(2.5)})
    r = json.loads(out.results_path.read_text())
    assert r["a"] == 1.0 and r["b"] == 2.5 and r["_mode"] == "fast" and r["_model"] == "some-model"
    assert out.results_path.parent.name == "some-model"
    with pytest.raises(ValueError, match="two-digit"):
        Outputs("validate", "m", True)


def test_runs_never_write_committed_results_unless_make_run(monkeypatch):
    from emolens.paths import REPO_ROOT
    from emolens.results import output_dir

    monkeypatch.delenv("EMOLENS_FIGURES", raising=False)
    monkeypatch.delenv("EMOLENS_COMMIT", raising=False)
    committed = REPO_ROOT / "figures" / "m"
    assert output_dir("m", fast=True) != committed  # fast mode
    assert output_dir("m", fast=False) != committed  # an interactive full run (JupyterLab)
    monkeypatch.setenv("EMOLENS_COMMIT", "1")
    assert output_dir("m", fast=True) != committed  # fast mode never, even under make run
    assert output_dir("m", fast=False) == committed
    assert output_dir("google/gemma-2-2b-it", fast=False).name == "google__gemma-2-2b-it"
