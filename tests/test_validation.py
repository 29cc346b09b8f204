"""Held-out classification, eval-set loaders, story parsing and blind-read scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emolens.analyses.validation import heldout_scores, topic_folds
from emolens.data import DataError
from emolens.data.generation import parse_stories, story_prompt
from emolens.data.sets import load_all_sets, load_minimal_pairs


def test_heldout_recovers_planted_emotions_and_never_sees_test_topics():
    g = torch.Generator().manual_seed(0)
    E, per, d = 4, 10, 16
    centres = torch.randn(E, d, generator=g) * 3
    labels = [f"e{i}" for i in range(E) for _ in range(per)]
    topics = list(range(E * per))
    means = (centres.repeat_interleave(per, 0) + torch.randn(E * per, d, generator=g))[:, None, :]
    counts = torch.full((E * per,), 5)
    ho = heldout_scores(means, counts, labels, topics, [f"e{i}" for i in range(E)], [0], None, denoised=False)
    assert ho.accuracy(1)[0] > 0.9
    # a story's own activation must not influence its score: poison one story and check the others' scores
    poisoned = means.clone()
    poisoned[0] += 1000
    ho2 = heldout_scores(poisoned, counts, labels, topics, [f"e{i}" for i in range(E)], [0], None, denoised=False)
    same_fold = topic_folds(topics) == topic_folds(topics)[0]
    assert not np.allclose(ho.scores[0], ho2.scores[0])  # its own row moves (it is test data)...
    assert np.allclose(ho.scores[same_fold][1:], ho2.scores[same_fold][1:])  # ...its fold-mates' do not


def test_shipped_eval_sets_load():
    sets = load_all_sets()
    assert len(sets["implicit_scenarios"]) >= 36 and len(sets["minimal_pairs"]) >= 40
    assert {t.id for t in sets["numeric_intensity"]} == {"painkiller_dose", "hours_without_food", "sister_age",
                                                          "dog_missing_days", "startup_runway_months",
                                                          "students_passed"}


def test_minimal_pair_validation(tmp_path):
    (tmp_path / "eval").mkdir()
    bad = {"id": "mp-x", "clean": "A good day.", "corrupt": "A bad night.", "clean_span": "good",
           "corrupt_span": "bad", "char_start": 2, "emotion_clean": "happy", "emotion_corrupt": "sad", "kind": "word"}
    (tmp_path / "eval" / "minimal_pairs.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="minimal_pairs.jsonl:1: clean and corrupt must differ only"):
        load_minimal_pairs(tmp_path)


def test_parse_stories_and_prompt():
    text = "Sure.\n[story 1] First one here.\n\n[Story 2]\nSecond  one.\n[story 3]"
    assert parse_stories(text) == ["First one here.", "Second one."]
    assert parse_stories("just text") == ["just text"]
    p = story_prompt("calm", "A train is late", 3)
    assert '"calm"' in p and "A train is late" in p and "[story 1]" in p


def test_blind_agreement_scoring():
    from emolens.data import load_stories
    from emolens.data.blind import blind_agreement

    stories = load_stories(emotions=["afraid", "calm"])
    if not stories:
        pytest.skip("corpus not present")
    labels = {s.id: ([s.emotion] if s.emotion == "afraid" else ["serene", "calm"]) for s in stories}
    out = blind_agreement(labels, stories, n_boot=100)
    assert out["top1"]["value"] == 0.5 and out["top5"]["value"] == 1.0
    assert out["cluster_top1"]["value"] == 1.0  # serene and calm share Peaceful Contentment
