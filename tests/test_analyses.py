"""The statistics and analyses that notebooks call: planted signals are found, nulls stay at chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.activations import Pooling
from emolens.analyses.validation import (
    agreement,
    bag_of_words_scores,
    chance_levels,
    classification_with_controls,
    heldout_scores,
    shuffled_label_null,
)
from emolens.stats import permutation_p, rank_of_true, rank_permutation_test
from emolens.vectors import CorpusActivations


class _Story:
    def __init__(self, i, emotion, topic, text):
        self.id, self.emotion, self.topic_id, self.text, self.slot = f"{emotion}-{i:02d}", emotion, topic, text, i


def _planted_corpus(E=6, per=10, d=24, noise=1.0, seed=0, neutral_dir_scale=0.0):
    """Stories whose activations are their emotion's centre plus noise, and a neutral covariance with one
    dominant direction (shared by every story, so denoising should remove it)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(E, d, generator=g) * 2
    nuisance = torch.randn(d, generator=g)
    nuisance /= nuisance.norm()
    emotions = [f"e{i}" for i in range(E)]
    stories, rows = [], []
    words = {e: f"word{e} " for e in emotions}
    for k in range(per):
        for i, e in enumerate(emotions):
            x = centres[i] + noise * torch.randn(d, generator=g) + neutral_dir_scale * torch.randn(1, generator=g) * nuisance
            rows.append(x)
            stories.append(_Story(k, e, k * E + i, (words[e] if k % 2 else "") + "plain text " * 5))
    means = torch.stack(rows)[:, None, :]
    cov = (torch.eye(d) * 0.1 + 50 * torch.outer(nuisance, nuisance))[None]
    acts = CorpusActivations(stories, means, torch.full((len(stories),), 10), [0], cov, torch.zeros(1, d), 200,
                             2000, Pooling(), emotions)
    return acts


def test_classification_with_controls_finds_planted_emotions_and_controls_sit_at_chance():
    acts = _planted_corpus(neutral_dir_scale=8.0)
    out = classification_with_controls(acts, 0, [i % 3 for i in range(6)], n_shuffles=3, n_boot=200)
    chance = chance_levels([i % 3 for i in range(6)], n_clusters=3)
    assert out["vectors"]["top1"].value > 0.9
    assert out["vectors"]["top1"].value >= out["vectors, raw"]["top1"].value  # denoising removes the nuisance
    assert out["random directions"]["top1"].value < chance["top1"] + 0.25
    assert out["shuffled labels"]["top1"].value < chance["top1"] + 0.25
    assert out["bag of words"]["top1"].value > chance["top1"]  # half the stories carry a telltale word
    assert set(out["vectors"]) == {"top1", "top5", "cluster", "correct"}


def test_denoised_heldout_path_removes_the_neutral_direction():
    acts = _planted_corpus(noise=0.5, neutral_dir_scale=20.0, seed=1)
    common = dict(story_means=acts.means, counts=acts.counts, labels=acts.labels, topic_ids=acts.topic_ids,
                  emotions=acts.emotions, layers=[0])
    den = heldout_scores(**common, neutral_cov=acts.neutral_cov).accuracy(1)[0]
    raw = heldout_scores(**common, neutral_cov=None, denoised=False).accuracy(1)[0]
    assert den > 0.9 and den > raw + 0.1


def test_shuffled_label_null_is_near_chance():
    acts = _planted_corpus()
    null = shuffled_label_null(acts, 0, n=5, seed=0)
    assert len(null) == 5 and np.mean(null) < 1 / 6 + 0.15


def test_bag_of_words_uses_only_training_folds():
    acts = _planted_corpus()
    texts = [s.text for s in acts.stories]
    h = bag_of_words_scores(texts, acts.labels, acts.topic_ids, acts.emotions)
    assert h.scores.shape == (len(texts), 1, 6)
    with_word = np.array(["word" in t for t in texts])
    top1 = h.scores[:, 0].argmax(1) == h.labels
    assert top1[with_word].mean() > 0.9 and top1[~with_word].mean() < 0.5


def test_permutation_and_rank_statistics():
    assert permutation_p([0.1, 0.2, 0.3], 0.25) == pytest.approx(2 / 4)
    assert permutation_p([-0.9, 0.1], 0.5, two_sided=True) == pytest.approx(2 / 3)
    scores = np.array([[3.0, 1, 2], [0, 5, 1], [1, 1, 0]])
    assert rank_of_true(scores, [0, 1, 0]).tolist() == [1, 1, 1]  # ties count in the true label's favour
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    planted = np.eye(4)[labels] + 0.1 * rng.normal(size=(60, 4))
    res = rank_permutation_test(planted, labels, (1, 3), n_perm=300)
    assert res["top1_rate"] == 1.0 and res["p_top1"] < 0.01 and res["null_top1_mean"] < 0.45
    noise = rank_permutation_test(rng.normal(size=(60, 4)), labels, (1,), n_perm=300)
    assert noise["p_top1"] > 0.01


def test_agreement_and_chance():
    a, b = np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])
    assert agreement(a, b) == {"b_given_a": 0.5, "only_a": 0.25, "only_b": 0.25}
    c = chance_levels([0, 0, 1, 1], n_clusters=2)
    assert c == {"top1": 0.25, "top5": 1.0, "cluster": 0.5}


def test_bag_of_words_transfers_across_corpora_and_another_corpus_loads_from_a_folder(tmp_path, tiny_llama):
    import json
    import shutil

    from emolens.analyses.validation import bag_of_words_transfer
    from emolens.paths import data_dir
    from emolens.vectors import corpus_activations

    train = [f"a sunny cheerful day number {i}" for i in range(5)] + [f"a gloomy grey day number {i}" for i in range(5)]
    test = ["cheerful and sunny again", "grey and gloomy again"]
    h = bag_of_words_transfer(train, ["happy"] * 5 + ["sad"] * 5, test, ["happy", "sad"], ["happy", "sad"])
    assert (h.scores[:, 0].argmax(1) == h.labels).all()
    # a fork's corpus in the same schema, read from its own folder by the same recipe
    root = tmp_path / "fork"
    (root / "stories").mkdir(parents=True)
    shutil.copy(data_dir() / "neutral_dialogues.jsonl", root)
    emos = [{"index": i, "emotion": e, "cluster": "c", "cluster_index": i, "exemplar": True}
            for i, e in enumerate(["glad", "glum"])]
    (root / "emotions.jsonl").write_text("".join(json.dumps(e) + "\n" for e in emos))
    for e in ("glad", "glum"):
        recs = [{"id": f"{e}-{j:02d}", "emotion": e, "topic_id": j, "person": "first", "author": "fork",
                 "text": f"A {e} little story number {j} about the fox and the stove."} for j in range(3)]
        (root / "stories" / f"{e}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    bridge, spec = tiny_llama
    acts = corpus_activations(bridge, spec, neutral_limit=5, layers=[1], data_dir=root, progress=False,
                              pooling=Pooling(start=1))
    assert acts.emotions == ["glad", "glum"] and len(acts.stories) == 6 and acts.n_neutral == 5
