"""Property-based tests (hypothesis) for the pieces whose inputs vary most."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emolens.activations import length_batches, pool_positions
from emolens.cache import content_hash, meta_digest

SPECIALS = {0, 1, 2}
tokens = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60)


@given(ids=tokens, start=st.integers(0, 30), width=st.one_of(st.none(), st.integers(1, 30)))
def test_pool_positions_by_the_definition(ids, start, width):
    end = None if width is None else start + width
    got = pool_positions(ids, SPECIALS, start, end)
    # the obvious definition: own-token index = how many non-special tokens came before
    want, own = [], 0
    for pos, t in enumerate(ids):
        if t not in SPECIALS:
            if pos > 0 and start <= own and (end is None or own < end):
                want.append(pos)
            own += 1
    assert got == want
    assert 0 not in got and all(ids[p] not in SPECIALS for p in got)


@given(ids=tokens, n_pad=st.integers(0, 5), start=st.integers(0, 10))
def test_pool_positions_ignore_added_specials(ids, n_pad, start):
    """Padding or a BOS (special tokens) added after position 0 shifts positions, never the pooled tokens."""
    head, rest = ids[:1], ids[1:]
    padded = head + [0] * n_pad + rest
    a = [ids[p] for p in pool_positions(ids, SPECIALS, start)]
    b = [padded[p] for p in pool_positions(padded, SPECIALS, start)]
    assert a == b


@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=50), bs=st.integers(1, 9))
def test_length_batches_partition(lengths, bs):
    batches = length_batches(lengths, bs)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= bs for b in batches)


settings_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=4)),
                               lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                               max_leaves=8)


@given(a=st.dictionaries(st.text(max_size=5), settings_values, max_size=4),
       b=st.dictionaries(st.text(max_size=5), settings_values, max_size=4))
def test_cache_keys_differ_when_settings_differ(a, b):
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert (content_hash(a) == content_hash(b)) == same


@given(meta=st.dictionaries(st.text(min_size=1, max_size=5), settings_values, min_size=1, max_size=4),
       key=st.text(min_size=1, max_size=5), value=settings_values)
def test_meta_digest_sees_every_change(meta, key, value):
    changed = dict(meta, **{key: value})
    if json.dumps(changed, sort_keys=True) != json.dumps(meta, sort_keys=True):
        assert meta_digest(changed) != meta_digest(meta)


record_fields = st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=8), st.integers(), st.just("calm-03")),
    "emotion": st.one_of(st.just("calm"), st.text(max_size=6), st.integers()),
    "topic_id": st.one_of(st.integers(-3, 120), st.text(max_size=3), st.booleans()),
    "person": st.one_of(st.sampled_from(["first", "third", "second"]), st.integers()),
    "text": st.one_of(st.text(max_size=20), st.none()),
    "author": st.one_of(st.just("writer-1"), st.none()),
    "channel": st.one_of(st.sampled_from(["body", "speech"]), st.integers()),
})


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=record_fields)
def test_loader_rejects_malformed_story_records_with_a_place(tmp_path, rec):
    from emolens.data import DataError, load_stories

    root = tmp_path
    (root / "stories").mkdir(exist_ok=True)
    (root / "emotions.jsonl").write_text('{"index": 0, "emotion": "calm", "cluster": "c", "cluster_index": 1, '
                                         '"exemplar": true}\n')
    (root / "stories" / "calm.jsonl").write_text(json.dumps(rec) + "\n")
    try:
        stories = load_stories(root, corpus="v2")
    except DataError as e:
        assert "calm.jsonl:1" in str(e)
        return
    # accepted: then it really is a well-formed record
    (s,) = stories
    assert s.emotion == "calm" and s.person in ("first", "third") and isinstance(s.text, str)
    assert s.id.startswith("calm-") and isinstance(s.topic_id, int)


@pytest.mark.parametrize("bad", ['{"id": 1', "[1, 2]", '"text"'])
def test_loader_rejects_non_objects(tmp_path, bad):
    from emolens.data import DataError
    from emolens.data.records import read_jsonl

    p = tmp_path / "x.jsonl"
    p.write_text(bad + "\n")
    with pytest.raises(DataError, match="x.jsonl:1"):
        list(read_jsonl(p))
