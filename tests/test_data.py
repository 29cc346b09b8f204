"""Data loaders, the leak matcher, the corpus checker, and the shipped corpus itself."""

from __future__ import annotations

import json

import pytest

from emolens.data import DataError, load_emotions, load_stories, load_topics, planned_slot
from emolens.data.check import check_corpus, near_duplicates
from emolens.data.leaks import BannedWords


def test_emotion_list_is_the_papers():
    emos = load_emotions()
    assert len(emos) == 171 and len({e.emotion for e in emos}) == 171
    assert {e.emotion for e in emos if e.exemplar} == {"happy", "inspired", "loving", "proud", "calm", "desperate",
                                                        "angry", "guilty", "sad", "afraid", "nervous", "surprised"}
    sizes = {}
    for e in emos:
        sizes[e.cluster] = sizes.get(e.cluster, 0) + 1
    assert sorted(sizes.values()) == [2, 3, 9, 9, 15, 15, 20, 25, 32, 41]


def test_topics_and_plan_balance():
    assert len(load_topics()) == 100
    slots = [planned_slot(i, j) for i in range(171) for j in range(12)]
    per_topic = [sum(t == k for t, _ in slots) for k in range(100)]
    assert min(per_topic) >= 20 and max(per_topic) <= 21
    for i in range(171):  # each emotion: 12 distinct topics, half first person
        mine = [planned_slot(i, j) for j in range(12)]
        assert len({t for t, _ in mine}) == 12 and sum(p == "first" for _, p in mine) == 6


def test_leak_matcher():
    bw = BannedWords({"mad": ("mad", "madly"), "calm": ("calm*",), "at ease": ("at ease", "grief-stricken")})
    assert bw.leaks("mad", "She made a cake.") == []
    assert bw.leaks("mad", "He was MAD, madly so.") == ["MAD", "madly"]
    assert bw.leaks("calm", "Calmly, she calmed down.") == ["Calmly", "calmed"]
    assert bw.leaks("at ease", "He felt at  ease; grief stricken") == ["at  ease", "grief stricken"]
    with pytest.raises(DataError, match="no banned-word list"):
        bw.leaks("happy", "text")


def _write(p, rows):
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bad_files_name_file_line_and_field(tmp_path):
    import shutil

    from emolens.paths import data_dir

    for f in ("emotions.jsonl", "topics.jsonl"):
        shutil.copy(data_dir() / f, tmp_path / f)
    (tmp_path / "stories").mkdir()
    good = {"id": "afraid-00", "emotion": "afraid", "topic_id": 0, "person": "first", "text": "x", "author": "t"}
    _write(tmp_path / "stories" / "afraid.jsonl", [good, dict(good, id="afraid-01", topic_id="eight")])
    with pytest.raises(DataError, match=r"afraid.jsonl:2: field 'topic_id' must be int"):
        load_stories(tmp_path, ["afraid"])
    _write(tmp_path / "stories" / "afraid.jsonl", [dict(good, person="second")])
    with pytest.raises(DataError, match=r"afraid.jsonl:1: field 'person' must be 'first' or 'third'"):
        load_stories(tmp_path, ["afraid"])
    (tmp_path / "stories" / "afraid.jsonl").write_text('{"id": \n')
    with pytest.raises(DataError, match=r"afraid.jsonl:1: not valid JSON"):
        load_stories(tmp_path, ["afraid"])
    with pytest.raises(DataError, match="unknown emotion"):
        load_stories(tmp_path, ["hungry"])


def test_checker_catches_leaks_lengths_plan_and_duplicates(tmp_path):
    import shutil

    from emolens.paths import data_dir

    for f in ("emotions.jsonl", "topics.jsonl"):
        shutil.copy(data_dir() / f, tmp_path / f)
    (tmp_path / "stories").mkdir()
    _write(tmp_path / "banned_words.jsonl", [{"emotion": "afraid", "banned": ["afraid", "fear*"]}])
    words = " ".join(f"word{i}" for i in range(100))
    rows = []
    for j in range(12):
        t, p = planned_slot(0, j)
        rows.append({"id": f"afraid-{j:02d}", "emotion": "afraid", "topic_id": t, "person": p,
                     "text": f"story {j} " + " ".join(f"w{j}x{i}" for i in range(100)), "author": "t"})
    rows[1]["text"] = "She was fearful. " + words
    rows[2]["text"] = "Too short."
    rows[3]["topic_id"] = (rows[3]["topic_id"] + 1) % 100
    rows[4]["text"] = rows[1]["text"] + " and one more"
    rows[5]["text"] = rows[5]["text"] + " She said, 'Go on.'"
    _write(tmp_path / "stories" / "afraid.jsonl", rows)
    rep = check_corpus(tmp_path, ["afraid"])
    text = "\n".join(rep.errors)
    assert "afraid-01: leaks banned word(s) ['fearful']" in text
    assert "afraid-02: 2 words" in text
    assert "afraid-03: (topic_id, person)" in text
    assert "near-duplicate stories afraid-01 and afraid-04" in text
    assert "afraid-05: quotations must be in straight double quotes (found ['Go on.'])" in text
    assert not rep.ok


def test_quotes_are_normalised_without_touching_apostrophes():
    from emolens.data.quotes import normalise_quotes, single_quoted_speech

    text = "The twins' coats hung there. 'Don't go,' she said, and he said \u201cwhy?\u201d 'Escobillas' was it; rock 'n' roll."
    assert single_quoted_speech(text) == ["Don't go,", "Escobillas"]
    assert normalise_quotes(text) == ("The twins' coats hung there. \"Don't go,\" she said, and he said \"why?\" "
                                      "\"Escobillas\" was it; rock 'n' roll.")
    assert normalise_quotes("It's the 90's, isn't it?") == "It's the 90's, isn't it?"
    assert all(normalise_quotes(s.text) == s.text for s in load_stories(corpus="v2"))


def test_near_duplicates_ignore_independent_texts():
    a = "the cat sat on the mat and looked at the dog across the room for a while"
    b = "a storm rolled over the hills while the farmer counted sheep in the barn at dusk"
    assert near_duplicates({"a": a, "b": b}) == []
    assert near_duplicates({"a": a, "c": a + " then slept"})[0][:2] == ("a", "c")


@pytest.mark.skipif(not load_stories(), reason="corpus not present")
def test_shipped_corpus_passes_every_check():
    rep = check_corpus()
    assert rep.ok, "\n".join(rep.errors[:30])
    assert rep.counts["stories"] == 171 * 12


def test_shipped_corpus_v2_matches_its_plan_and_has_no_duplicates():
    rep = check_corpus(corpus="v2")
    assert rep.ok, "\n".join(rep.errors[:30])
    assert rep.counts["near_duplicates"] == 0 and rep.counts["exact_duplicates"] == 0
    assert rep.counts["neutral_dialogues_v2"] >= 1200  # the paper's scale: 12 per topic plus the other kinds
    assert rep.counts["speakers_dialogues"] >= 480 and rep.counts["deflection_dialogues"] >= 600
    if rep.counts["v2_stories"] == rep.counts["v2_planned"]:  # complete: the balance the plan promises
        assert rep.counts["v2_writers_per_emotion_min"] >= 4 and rep.counts["largest_writer_share"] <= 0.25
        assert rep.counts["v2_channel_spread"] <= 1 and rep.counts["v2_topics_per_emotion_min"] >= 40


def test_v2_plan_is_balanced_by_design():
    from collections import Counter

    from emolens.data.plan import V2_WRITERS, v2_plan, writer_order

    emotions = [e.emotion for e in load_emotions()]
    plan = v2_plan(emotions)
    assert len(plan) == 171 * 40 and len({s.id for s in plan}) == len(plan)
    per_topic = Counter(s.topic_id for s in plan)
    assert max(per_topic.values()) - min(per_topic.values()) <= 1
    for e in emotions[:20]:
        mine = [s for s in plan if s.emotion == e]
        assert Counter(s.channel for s in mine) == Counter({c: 8 for c in ("action", "body", "speech", "thought",
                                                                            "setting")})
        assert len({s.topic_id for s in mine}) == 40 and Counter(s.person for s in mine)["first"] == 20
        for w in V2_WRITERS:  # each writer: every channel once, every topic fold once, for every emotion
            ws = [s for s in mine if s.writer == w]
            assert {s.channel for s in ws} == {"action", "body", "speech", "thought", "setting"}
            assert sorted(s.topic_id % 5 for s in ws) == [0, 1, 2, 3, 4]
    order = writer_order(plan, "writer-7")
    assert len(order) == 855 and order != sorted(order, key=lambda s: (s.emotion, s.slot))


def test_intake_checks_against_the_plan(tmp_path):
    import json
    import shutil

    from emolens.data.intake import add, todo
    from emolens.paths import data_dir

    for f in ("emotions.jsonl", "topics.jsonl", "banned_words.jsonl"):
        shutil.copy(data_dir() / f, tmp_path / f)
    (tmp_path / "stories").mkdir()
    nxt = todo("writer-7", 2, tmp_path)
    good = " ".join(["The bus stopped at the corner and Wen counted the coins in his palm before stepping off."] * 6)
    sub = tmp_path / "batch.jsonl"
    sub.write_text(json.dumps({"id": nxt[1]["id"], "text": "Too short."}) + "\n"
                   + json.dumps({"id": "afraid-17", "text": good}) + "\n")
    stored, rejected = add("writer-7", sub, tmp_path)
    assert stored == 0 and len(rejected) == 2
    assert "words, allowed" in rejected[0] and "belongs to writer-8" in rejected[1]
    slot = next(s for s in nxt if s["channel"] != "speech")
    sub.write_text(json.dumps({"id": slot["id"], "text": good}) + "\n")
    assert add("writer-7", sub, tmp_path) == (1, [])
    rec = json.loads((tmp_path / "stories_v2" / "writer-7.jsonl").read_text())
    assert rec["channel"] == slot["channel"] and rec["author"] == "writer-7"  # filled in from the plan
    assert add("writer-7", sub, tmp_path)[1][0].endswith("already written")


def test_dialogue_plans_cross_role_and_emotion_and_the_intake_refuses_named_feelings(tmp_path):
    import json
    import shutil
    from collections import Counter

    from emolens.data.dialogues import add, deflection_plan, load_dialogues, speaker_plan
    from emolens.paths import data_dir

    sp = speaker_plan()
    assert len(sp) == 480 and len({p["id"] for p in sp}) == 480
    assert all(p["emotions"][0] != p["emotions"][1] for p in sp)
    ha = [p for p in sp if p["variant"] == "human_assistant"]
    human_emotion = Counter(p["emotions"][p["speakers"].index("Human")] for p in ha)
    assert len(human_emotion) == 24 and max(human_emotion.values()) - min(human_emotion.values()) <= 10
    dp = deflection_plan()
    assert len(dp) == 600 and Counter(p["variant"] for p in dp) == {"deflect": 300, "open": 300}
    for f in ("emotions.jsonl", "topics.jsonl", "banned_words.jsonl"):
        shutil.copy(data_dir() / f, tmp_path / f)
    p = sp[0]  # happy (speaker 0) and excited (speaker 1), four turns
    lines = ["Look at this, the whole box of old photos survived the move.", "No way, show me, show me right now.",
             "Here, this one is from the summer at the lake.", "We have to frame it today, I cannot wait."]
    rec = {"id": p["id"], "turns": [{"speaker": k % 2, "text": t} for k, t in enumerate(lines)]}
    sub = tmp_path / "b.jsonl"
    sub.write_text(json.dumps(rec) + "\n")
    assert add("speakers", sub, tmp_path) == (1, [])
    named = dict(rec, id=sp[1]["id"], turns=rec["turns"] + [{"speaker": 0, "text": "I am so excited about it all."}])
    sub.write_text(json.dumps(named) + "\n")
    stored, rejected = add("speakers", sub, tmp_path)
    assert stored == 0 and "names 'excited'" in rejected[0]
    (d,) = load_dialogues("speakers", tmp_path)
    assert d.emotions == ("happy", "excited") and d.text().startswith("Human: Look at this")


def test_banned_word_spans_cover_every_emotion_and_refuse_unknown_ones():
    from emolens.data import DataError
    from emolens.data.leaks import BannedWords

    b = BannedWords({"happy": ("happy",), "glad": ("glad", "happy")})
    text = "So happy, so glad."
    assert b.spans(text) == {(3, 8), (13, 17)}  # the span two emotions ban is counted once
    assert b.spans(text, ["glad"]) == {(3, 8), (13, 17)} and b.spans(text, ["happy"]) == {(3, 8)}
    with pytest.raises(DataError, match="calm"):
        b.spans(text, ["calm"])
