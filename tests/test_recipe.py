"""The cached, resumable recipe: interruption and resume, cache hits and invalidation, vector files."""

from __future__ import annotations

import pytest
import torch

from emolens.activations import Pooling
from emolens.data import load_stories
from emolens.vectors import EmotionVectors, emotion_vectors, story_activations

LABELS = ["a", "b", "a", "b", "a", "b"]


def test_resume_after_interruption_gives_same_result(tiny_llama, sample_texts, isolated_cache, monkeypatch):
    bridge, spec = tiny_llama
    full, full_counts = story_activations(bridge, spec, sample_texts, None, Pooling(start=2), chunk_size=2,
                                          progress=False, folder=isolated_cache / "ref")

    import emolens.vectors.recipe as recipe

    real = recipe.pooled_means
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived during the second chunk
        return real(*a, **k)

    monkeypatch.setattr(recipe, "pooled_means", dying)
    with pytest.raises(KeyboardInterrupt):
        story_activations(bridge, spec, sample_texts, None, Pooling(start=2), chunk_size=2, progress=False,
                          folder=isolated_cache / "run")
    assert len(list((isolated_cache / "run" / "checkpoints").glob("*chunk*.safetensors"))) == 1
    monkeypatch.setattr(recipe, "pooled_means", real)
    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(recipe, "pooled_means", counting)
    resumed, counts = story_activations(bridge, spec, sample_texts, None, Pooling(start=2), chunk_size=2,
                                        progress=False, folder=isolated_cache / "run")
    assert counted["n"] == 2  # chunks 2 and 3 only: chunk 1 came from its checkpoint
    assert torch.equal(resumed, full) and torch.equal(counts, full_counts)


def test_cache_hit_and_invalidation(tiny_llama, sample_texts, isolated_cache, monkeypatch):
    bridge, spec = tiny_llama
    import emolens.vectors.recipe as recipe

    real = recipe.pooled_means
    calls = {"n": 0}

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(recipe, "pooled_means", counting)
    kw = dict(progress=False, folder=isolated_cache / "c")
    a, _ = story_activations(bridge, spec, sample_texts, [1], Pooling(start=2), **kw)
    n = calls["n"]
    b, _ = story_activations(bridge, spec, sample_texts, [1], Pooling(start=2), **kw)
    assert calls["n"] == n and torch.equal(a, b)  # loaded, not recomputed
    story_activations(bridge, spec, sample_texts[:-1] + ["A changed story."], [1], Pooling(start=2), **kw)
    assert calls["n"] > n  # a changed corpus recomputes
    m = calls["n"]
    story_activations(bridge, spec, sample_texts, [1], Pooling(start=3), **kw)
    assert calls["n"] > m  # a changed setting recomputes


def test_corrupt_cache_is_recomputed(tiny_llama, sample_texts, isolated_cache):
    bridge, spec = tiny_llama
    kw = dict(progress=False, folder=isolated_cache / "c")
    a, _ = story_activations(bridge, spec, sample_texts, [1], Pooling(start=2), **kw)
    (f,) = [p for p in (isolated_cache / "c").glob("*.safetensors")]
    f.write_bytes(f.read_bytes()[:-8] + b"garbage!")
    b, _ = story_activations(bridge, spec, sample_texts, [1], Pooling(start=2), **kw)
    assert torch.equal(a, b)


def test_vectors_roundtrip_and_model_check(tiny_llama, sample_texts, isolated_cache):
    bridge, spec = tiny_llama
    ev = emotion_vectors(bridge, spec, sample_texts, LABELS, sample_texts[:3], pooling=Pooling(start=2),
                                 progress=False, folder=isolated_cache / "c")
    assert ev.vectors.shape == (2, spec.n_layers, spec.d_model)
    assert ev.provenance["model"] == spec.name
    path = ev.save(isolated_cache / "v")
    back = EmotionVectors.load(path, expect_model=spec.name)
    assert torch.equal(back.vectors, ev.vectors) and back.emotions == ["a", "b"]
    assert all(torch.equal(p, q) for p, q in zip(back.neutral_pcs, ev.neutral_pcs))
    with pytest.raises(ValueError, match="not 'other-model'"):
        EmotionVectors.load(path, expect_model="other-model")


def test_emotion_without_stories_is_an_error(tiny_llama, sample_texts, isolated_cache):
    bridge, spec = tiny_llama
    with pytest.raises(ValueError, match="no stories"):
        emotion_vectors(bridge, spec, sample_texts, LABELS, None, emotions=["a", "b", "c"],
                                progress=False, folder=isolated_cache / "c")


def test_subsample_spreads_writers_and_is_first_n_on_one_writer():
    from collections import Counter

    from emolens.vectors import spread_per_emotion

    v2 = load_stories(corpus="v2")
    kept = spread_per_emotion(v2, 9)
    per = Counter(s.emotion for s in kept)
    assert set(per.values()) == {9}
    for emo in list(per)[:20]:
        assert len({s.author for s in kept if s.emotion == emo}) == 9  # one story from each of its 9 writers
    firsts = Counter(s.author for s in spread_per_emotion(v2, 1))
    assert max(firsts.values()) - min(firsts.values()) <= 171 // 9  # every writer leads some emotions
    v1 = load_stories(corpus="v1")
    kept1 = spread_per_emotion(v1, 3)
    first = v1[0].emotion  # the first emotion starts at slot 0, the next at slot 1, ...
    assert [s.slot for s in kept1 if s.emotion == first] == [0, 1, 2]
    assert set(Counter(s.emotion for s in kept1).values()) == {3}
    v2_kept = spread_per_emotion(v2, 6)  # writers start at different slots: topic folds are not all the same
    assert min(len({s.topic_id % 5 for s in v2_kept if s.emotion == e}) for e in per) >= 3
