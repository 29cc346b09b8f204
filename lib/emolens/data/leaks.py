"""Banned-word lists and the leak matcher: a story must never name its own emotion."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from emolens.data.records import DataError, field, read_jsonl
from emolens.paths import data_dir as repo_data_dir


def _pattern(term: str) -> str:
    """Regex for one banned term: whole words, case-insensitive; a trailing '*' allows any ending.

    Multi-word and hyphenated terms ("at ease", "grief-stricken") match across any run of spaces or hyphens.
    """
    stem = term.rstrip("*").strip().lower()
    if not stem:
        raise DataError(f"empty banned term {term!r}")
    parts = [re.escape(p) for p in re.split(r"[\s\-]+", stem)]
    body = r"[\s\-]+".join(parts)
    tail = r"[a-z']*" if term.endswith("*") else ""
    return rf"(?<![a-z]){body}{tail}(?![a-z])"


@dataclass(frozen=True)
class BannedWords:
    """Per-emotion banned terms, compiled once."""

    terms: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rx", {e: re.compile("|".join(_pattern(t) for t in ts), re.IGNORECASE)
                                         for e, ts in self.terms.items()})

    def leaks(self, emotion: str, text: str) -> list[str]:
        """The banned terms of ``emotion`` found in ``text`` (as they appear there)."""
        if emotion not in self.terms:
            raise DataError(f"no banned-word list for emotion {emotion!r}")
        return [m.group(0) for m in self._rx[emotion].finditer(text)]  # type: ignore[attr-defined]

    def spans(self, text: str, emotions: Iterable[str] | None = None) -> set[tuple[int, int]]:
        """Character spans ``(start, end)`` of every banned term of ``emotions`` (all emotions by default) in
        ``text``; a span several emotions ban is counted once."""
        chosen = list(self.terms) if emotions is None else list(emotions)
        unknown = [e for e in chosen if e not in self.terms]
        if unknown:
            raise DataError(f"no banned-word list for emotions {unknown}")
        return {m.span() for e in chosen for m in self._rx[e].finditer(text)}  # type: ignore[attr-defined]


def load_banned_words(data_dir: Path | None = None, path: Path | None = None) -> BannedWords:
    path = Path(path) if path else Path(data_dir or repo_data_dir()) / "banned_words.jsonl"
    terms: dict[str, tuple[str, ...]] = {}
    for n, o in read_jsonl(path):
        w = f"{path}:{n}"
        emo = field(o, "emotion", str, w)
        banned = field(o, "banned", list, w)
        if not banned or not all(isinstance(t, str) and t.strip() for t in banned):
            raise DataError(f"{w}: field 'banned' must be a non-empty list of non-empty strings")
        if emo in terms:
            raise DataError(f"{w}: emotion {emo!r} listed twice")
        terms[emo] = tuple(banned)
    return BannedWords(terms)
