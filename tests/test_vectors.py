"""Vector maths on synthetic data with planted directions."""

from __future__ import annotations

import pytest
import torch

from emolens.vectors import build_emotion_vectors, emotion_means, neutral_components, project_out


def test_neutral_components_find_planted_directions():
    g = torch.Generator().manual_seed(0)
    d = 32
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T  # orthonormal rows
    # neutral data: huge variance along basis[0], basis[1]; small isotropic noise elsewhere
    x = torch.randn(4000, d, generator=g) * 0.1
    x += torch.randn(4000, 1, generator=g) * 10 * basis[0] + torch.randn(4000, 1, generator=g) * 6 * basis[1]
    cov = torch.cov(x.T)
    pcs = neutral_components(cov, variance_fraction=0.5)
    assert pcs.shape[0] == 1 and abs(float(pcs[0] @ basis[0])) > 0.999
    pcs2 = neutral_components(cov, n_components=2)
    span = pcs2.T @ pcs2
    assert torch.allclose(span @ basis[1], basis[1], atol=2e-2)
    v = 3 * basis[0] + 2 * basis[5]
    out = project_out(v, pcs2)
    assert torch.allclose(out, 2 * basis[5], atol=2e-2)


def test_component_choice_errors():
    cov = torch.eye(4)
    assert neutral_components(cov, 0.5, 3).shape[0] == 3  # a count overrides the fraction
    with pytest.raises(ValueError, match="variance_fraction or n_components"):
        neutral_components(cov, None, None)
    with pytest.raises(ValueError, match="variance_fraction"):
        neutral_components(cov, 1.5)


def test_centring_and_weighting():
    means = torch.tensor([[[1.0]], [[3.0]], [[10.0]]])
    counts = torch.tensor([1, 3, 5])
    labels = ["x", "x", "y"]
    story, _ = emotion_means(means, counts, labels, ["x", "y"], "story")
    token, _ = emotion_means(means, counts, labels, ["x", "y"], "token")
    assert story[0, 0, 0] == 2.0 and token[0, 0, 0] == 2.5
    ev = build_emotion_vectors(means, counts, labels, ["x", "y"], [0], None)
    assert torch.allclose(ev.vectors.sum(0), torch.zeros(1, 1))  # centred: the mean over emotions is zero


def test_skipped_stories_are_counted():
    means = torch.ones(3, 1, 2)
    ev = build_emotion_vectors(means, torch.tensor([4, 0, 2]), ["x", "x", "y"], ["x", "y"], [0], None)
    assert ev.settings["skipped_stories"] == {"x": 1} and ev.settings["n_stories"] == 2
