"""Typed loaders, the topic plan and validators for the corpus in ``data/``."""

from emolens.data.leaks import BannedWords, load_banned_words
from emolens.data.records import (
    DataError,
    Emotion,
    Story,
    Topic,
    load_emotions,
    load_stories,
    load_topics,
    planned_slot,
    read_jsonl,
)

__all__ = [
    "BannedWords",
    "DataError",
    "Emotion",
    "Story",
    "Topic",
    "load_banned_words",
    "load_emotions",
    "load_stories",
    "load_topics",
    "planned_slot",
    "read_jsonl",
]
