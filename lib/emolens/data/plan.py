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
from dataclasses import dataclass

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
