"""The corpus v2 plan: every new story's writer, narrative channel, person and topic, fixed before writing.

Corpus v1 (stories 0-11 of each emotion) was written in alphabetical blocks, one writer per block, so writer
style and emotion could not be told apart. v2 adds stories 12-51 of every emotion, crossed by design:

- each of the eight v2 writers writes five stories of *every* emotion, one in each narrative channel, so writer,
  channel and emotion are balanced against one another (per emotion: 8 writers x 5 channels; a v1 block writer
  then holds 12 of 52 stories, 23%, and any v2 writer 5 of 52, 10%);
- topics walk the 100-topic cycle in windows of 40 (stride 37), so every emotion spans 40 topics, every topic
  carries 68-69 v2 stories, and every (emotion, writer) pair has exactly one story in each ``topic_id % 5`` fold;
- person alternates so that each emotion is half first person, half third.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from emolens.data.records import CHANNELS, N_TOPICS, STORIES_PER_EMOTION

CHANNEL_MEANING = {
    "action": "what the character does: gestures, choices, pace, how they handle things",
    "body": "what the character's body feels: breath, temperature, muscles, stomach, energy",
    "speech": "what the character says aloud and how: words, tone, pace, volume (at least two quoted lines)",
    "thought": "what the character thinks: judgements, memories, plans, the voice in their head",
    "setting": "the situation and how the character takes in the surroundings: what they notice and what it means",
}
V2_WRITERS = tuple(f"writer-{n}" for n in range(7, 15))
V2_PER_WRITER = len(CHANNELS)  # stories per (emotion, writer)
V2_PER_EMOTION = len(V2_WRITERS) * V2_PER_WRITER  # 40
V2_FIRST_SLOT = STORIES_PER_EMOTION  # v2 story ids continue after v1's 0..11
TOPIC_STEP = 37  # a generator of Z/100 whose residue mod 5 is non-zero: consecutive slots change fold


@dataclass(frozen=True)
class Slot:
    """One planned v2 story."""

    id: str
    emotion: str
    emotion_index: int
    slot: int
    writer: str
    channel: str
    person: str
    topic_id: int


def v2_slot(emotion: str, emotion_index: int, k: int) -> Slot:
    """The plan for v2 story k (0..39) of an emotion; its id number is 12 + k."""
    if not 0 <= k < V2_PER_EMOTION:
        raise ValueError(f"v2 slot k must be in 0..{V2_PER_EMOTION - 1}, got {k}")
    w, j = divmod(k, V2_PER_WRITER)
    # Position on the topic cycle: emotion i takes the 40 consecutive positions starting at 40 i.
    topic = (TOPIC_STEP * (k + V2_PER_EMOTION * emotion_index)) % N_TOPICS
    slot = V2_FIRST_SLOT + k
    return Slot(id=f"{emotion.replace(' ', '_')}-{slot:02d}", emotion=emotion, emotion_index=emotion_index,
                slot=slot, writer=V2_WRITERS[w], channel=CHANNELS[(j + w + emotion_index) % len(CHANNELS)],
                person="first" if (k + emotion_index) % 2 == 0 else "third", topic_id=topic)


def v2_plan(emotions: list[str]) -> list[Slot]:
    """Every v2 slot for ``emotions`` (the full list, in file order), emotion by emotion."""
    return [v2_slot(e, i, k) for i, e in enumerate(emotions) for k in range(V2_PER_EMOTION)]


def writer_order(plan: list[Slot], writer: str) -> list[Slot]:
    """A writer's slots in the order they are written: emotions in a shuffled order fixed by the writer's name,
    so a writer stopped part-way has covered a random spread of clusters rather than an alphabetical block."""
    if writer not in V2_WRITERS:
        raise ValueError(f"unknown v2 writer {writer!r}; allowed: {', '.join(V2_WRITERS)}")
    mine = [s for s in plan if s.writer == writer]
    emotions = sorted({s.emotion for s in mine})
    random.Random(f"emolens-v2-{writer}").shuffle(emotions)
    rank = {e: n for n, e in enumerate(emotions)}
    return sorted(mine, key=lambda s: (rank[s.emotion], s.slot))


def check_v2(stories: list[Any], emotions: list[Any], rep: Any, require_complete: bool = False) -> None:
    """Add to ``rep`` (a :class:`emolens.data.check.Report`): every v2 story matches its plan slot; progress;
    and, once complete, the balance the plan promises (writers per emotion, largest writer share, channels)."""
    index = {e.emotion: e.index for e in emotions}
    plan = {s.id: s for s in v2_plan(sorted(index, key=index.get)) if s.emotion in index}
    for st in stories:
        slot = plan.get(st.id)
        if slot is None:
            rep.errors.append(f"{st.id}: not a v2 slot")
            continue
        got = (st.author, st.channel, st.person, st.topic_id)
        want = (slot.writer, slot.channel, slot.person, slot.topic_id)
        if got != want:
            rep.errors.append(f"{st.id}: (author, channel, person, topic_id) = {got}, plan says {want}")
    have, planned = len(stories), len(plan)
    rep.counts["v2_stories"], rep.counts["v2_planned"] = have, planned
    if have < planned:
        msg = f"corpus v2 in progress: {have} of {planned} planned stories written"
        (rep.errors if require_complete else rep.warnings).append(msg)
        return
    rows = balance_summary(stories, emotions)
    rep.counts.update(rows)
    if rows["v2_writers_per_emotion_min"] < 4:
        rep.errors.append(f"an emotion has stories by only {rows['v2_writers_per_emotion_min']} writers (need >= 4)")
    if rows["largest_writer_share"] > 0.25:
        rep.errors.append(f"a writer holds {rows['largest_writer_share']:.0%} of an emotion's stories (max 25%)")
    if rows["v2_channel_spread"] > 1:
        rep.errors.append(f"channels unbalanced within an emotion (spread {rows['v2_channel_spread']})")


def balance_summary(v2_stories: list[Any], emotions: list[Any], v1_per_emotion: int = STORIES_PER_EMOTION
                    ) -> dict[str, Any]:
    """Per-emotion balance of v2 (and of v1 + v2, where each v1 block writer holds ``v1_per_emotion``)."""
    by_emotion: dict[str, list[Any]] = {}
    for st in v2_stories:
        by_emotion.setdefault(st.emotion, []).append(st)
    writers = [len({st.author for st in ss}) for ss in by_emotion.values()]
    share = [max(v1_per_emotion, max(Counter(st.author for st in ss).values())) / (len(ss) + v1_per_emotion)
             for ss in by_emotion.values()]
    spread = [max(Counter(st.channel for st in ss).values()) - min(Counter(st.channel for st in ss).values())
              for ss in by_emotion.values()]
    topics = [len({st.topic_id for st in ss}) for ss in by_emotion.values()]
    return {"v2_writers_per_emotion_min": min(writers), "largest_writer_share": round(max(share), 4),
            "v2_channel_spread": max(spread), "v2_topics_per_emotion_min": min(topics)}
