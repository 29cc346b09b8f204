"""Shared fixtures: tiny random models (no network) and an isolated cache folder."""

from __future__ import annotations

import pytest
import torch

torch.set_grad_enabled(False)


@pytest.fixture(scope="session")
def tiny_llama():
    from emolens.models import tiny_model

    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gemma():
    from emolens.models import tiny_model

    return tiny_model("gemma3", seed=0)


@pytest.fixture(scope="session", params=["llama", "gemma3", "gpt2"])
def tiny_any(request):
    from emolens.models import tiny_model

    return tiny_model(request.param, seed=0)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EMOLENS_FIGURES", str(tmp_path / "figures"))
    return tmp_path


SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps.",
    "She opened the letter, read it twice, and put it back in the drawer without a word. " * 3,
    "He took 1000 mg.",
    "Human: What is two plus two?\n\nAssistant: Four. " * 2,
    "A short one.",
    "The numbers 0123456789 appear here, and then the fox returns to the stove to sleep. " * 4,
]


@pytest.fixture
def sample_texts():
    return list(SAMPLE_TEXTS)
