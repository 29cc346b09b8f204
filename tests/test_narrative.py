"""Narrative features and within-group statistics: hand-checked values and a planted effect."""

from __future__ import annotations

import numpy as np

from emolens.analyses.narrative import (
    group_means,
    narrative_features,
    random_direction_null,
    within_group_r,
    within_groups,
)


def test_features_by_hand():
    f = narrative_features(['Her chest was tight. "Go," she said.', "Nothing here at all."])
    assert np.isclose(f["body"][0], 100 / 7) and f["body"][1] == 0  # "chest" in 7 words
    assert np.isclose(f["speech"][0], 3 / len('Her chest was tight. "Go," she said.'))
    assert list(f["words"]) == [7, 4]


def test_within_groups_removes_group_means():
    x, g = np.array([1.0, 3.0, 10.0, 14.0]), ["a", "a", "b", "b"]
    assert np.allclose(within_groups(x, g), [-1, 1, -2, 2])
    assert np.allclose(group_means(x, g, ["b", "a"]), [12, 2])


def test_planted_direction_beats_random_null():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 10)
    feature = rng.standard_normal(200)
    d = np.zeros(32)
    d[3] = 1.0
    # group offsets alone would fool an across-group test; the within-group one sees only the planted signal
    points = rng.standard_normal((200, 32)) + 5 * rng.standard_normal((20, 32))[groups]
    points[:, 3] += 2 * feature
    r = within_group_r(points, d, feature, groups)
    null = random_direction_null(points, feature, groups, n=100)
    assert r > 0.8 and r > np.percentile(null, 99)


def test_components_vs_feature_finds_the_planted_component():
    from emolens.analyses.narrative import components_vs_feature

    texts = ["Her chest and hands shook.", "He said nothing.", "My legs ached, my back too.", "We walked home."]
    labels, emotions = ["a", "b", "a", "b"], ["a", "b"]
    body = narrative_features(texts)["body"]
    scores = np.array([[body[[0, 2]].mean(), 1.0], [body[[1, 3]].mean(), 2.0]])
    out = components_vs_feature(scores, texts, labels, emotions, k=2, n_boot=50)
    assert np.isclose(out["pc1"]["value"], 1.0) and np.isclose(out["pc2"]["value"], -1.0)


def test_body_words_hold_no_emotion_vocabulary():
    from emolens.analyses.narrative import BODY_WORDS
    from emolens.data import load_emotions
    from emolens.data.leaks import load_banned_words

    assert not BODY_WORDS & {e.emotion for e in load_emotions()}
    banned = load_banned_words()
    hits = {(e, w) for e in banned.terms for w in BODY_WORDS if banned.leaks(e, w)}
    assert not hits, hits


def test_speech_counts_every_quotation_style():
    from emolens.analyses.narrative import narrative_features

    texts = ['He said "go now" and left.', "He said 'go now' and left.", "He said \u201cgo now\u201d and left.",
             "'Don't go,' she said.", "The kids' bikes weren't there."]
    f = narrative_features(texts)["speech"]
    assert f[0] == f[1] == f[2] > 0  # straight double, single and curly quotes count alike
    assert np.isclose(f[3], len("Don't go,") / len(texts[3]))  # an apostrophe inside the quote belongs to it
    assert f[4] == 0  # apostrophes are not speech


def test_factor_effect_finds_a_planted_channel_axis_and_not_a_random_one():
    from emolens.analyses.narrative import covariance_directions, data_shaped_nulls, eta_squared, factor_effect

    rng = np.random.default_rng(0)
    n, d = 400, 20
    groups = np.repeat(np.arange(20), 20)
    channel = np.tile(["body", "speech", "action", "thought", "setting"], 80)
    axis = np.zeros(d)
    axis[0] = 1
    shift = {"body": 2.0, "speech": -2.0, "action": 0.5, "thought": -0.5, "setting": 0.0}
    pts = rng.normal(size=(n, d)) + np.outer([shift[c] for c in channel], axis) + rng.normal(size=(20, d))[groups] * 3
    assert eta_squared(pts[:, 0], channel, groups) > 0.5
    eff = factor_effect(pts, axis, channel, groups, n=100)
    assert eff["eta_squared"] > eff["null_95"] and eff["p"] < 0.05
    other = factor_effect(pts, np.eye(d)[5], channel, groups, n=100)
    assert other["eta_squared"] < other["null_95"]  # chance alone gives eta^2 near 4/19 here: hence the null
    dirs = covariance_directions(pts, 50)
    assert np.allclose(np.linalg.norm(dirs, axis=1), 1)
    feature = pts[:, 0] + rng.normal(size=n)
    nulls = data_shaped_nulls(pts, feature, groups, np.eye(d)[1:6], np.eye(d)[:8], n=50)
    assert set(nulls) == {"covariance", "emotion_vectors", "later_pcs"} and len(nulls["later_pcs"]) == 6


def test_style_factors_names_the_planted_factor_only():
    from types import SimpleNamespace

    from emolens.analyses.narrative import style_factors

    rng = np.random.default_rng(3)
    n, d = 300, 12
    emotions = np.repeat([f"e{i}" for i in range(15)], 20)
    channels = np.tile(["body", "speech", "action", "thought", "setting"], 60)
    writers = np.tile(np.repeat(["w1", "w2"], 5), 30)
    shift = {"body": 3.0, "speech": -3.0, "action": 1.0, "thought": -1.0, "setting": 0.0}
    pts = rng.normal(size=(n, d))
    pts[:, 0] += [shift[c] for c in channels]
    stories = [SimpleNamespace(emotion=e, channel=c, author=w, person="first" if i % 2 else "third",
                               text="my hands shook" if c == "body" else "she said no")
               for i, (e, c, w) in enumerate(zip(emotions, channels, writers))]
    pcs = SimpleNamespace(components=np.eye(d)[:6])
    out = style_factors(pts, pcs, stories, np.eye(d)[6:9], n=60)
    ch, wr = out["factors"]["channel"]["pc1"], out["factors"]["writer"]["pc1"]
    assert ch["eta_squared"] > 0.5 and ch["p"] < 0.05
    assert wr["eta_squared"] < wr["null_95"] + 0.02 and out["factors"]["channel"]["pc2"]["p"] > 0.05
    body = out["body_pc1_within_emotion"]
    assert body["abs_r"] > 0.5 and body["nulls"]["later_pcs"]["n"] == 4
