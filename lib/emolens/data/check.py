"""Corpus checks: schema, plan, banned-word leaks, lengths, duplicates and topic balance.

Run ``python -m emolens.data check`` (add ``--emotions a,b`` to check a share). Exit status 1 on any error.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dfield
from itertools import combinations
from pathlib import Path
from typing import Any

from emolens.data.leaks import load_banned_words
from emolens.data.records import (
    STORIES_PER_EMOTION,
    load_emotions,
    load_stories,
    load_topics,
    planned_slot,
)
from emolens.paths import data_dir as repo_data_dir

MIN_WORDS, MAX_WORDS = 90, 170
NEAR_DUPLICATE_JACCARD = 0.5  # 5-word shingles; independently written paragraphs score well below 0.1


@dataclass
class Report:
    errors: list[str] = dfield(default_factory=list)
    warnings: list[str] = dfield(default_factory=list)
    counts: dict[str, int] = dfield(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + k]) for i in range(max(1, len(w) - k + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def near_duplicates(texts: dict[str, str], threshold: float = NEAR_DUPLICATE_JACCARD) -> list[tuple[str, str, float]]:
    """Pairs of ids whose 5-word-shingle Jaccard similarity reaches ``threshold``.

    Candidate pairs come from an inverted index of shingles, so the check stays fast on thousands of texts.
    """
    sh = {k: shingles(t) for k, t in texts.items()}
    index: dict[tuple[str, ...], list[str]] = {}
    for k, s in sh.items():
        for g in s:
            index.setdefault(g, []).append(k)
    shared: Counter[tuple[str, str]] = Counter()
    for ids in index.values():
        if len(ids) < 50:  # a shingle in 50+ texts is a stock phrase, counted by repeated_phrases instead
            for a, b in combinations(sorted(ids), 2):
                shared[(a, b)] += 1
    out = []
    for a, b in shared:
        j = jaccard(sh[a], sh[b])
        if j >= threshold:
            out.append((a, b, round(j, 3)))
    return sorted(out)


def nearest_similarity(texts: dict[str, str]) -> dict[str, float]:
    """Each text's highest 5-shingle Jaccard similarity to any other text (0 when it shares no shingle)."""
    sh = {k: shingles(t) for k, t in texts.items()}
    index: dict[tuple[str, ...], list[str]] = {}
    for k, s in sh.items():
        for g in s:
            index.setdefault(g, []).append(k)
    best = dict.fromkeys(texts, 0.0)
    for k, s in sh.items():
        for other in {o for g in s for o in index[g]} - {k}:
            best[k] = max(best[k], jaccard(s, sh[other]))
    return best


def repeated_phrases(texts: dict[str, str], k: int = 6, min_count: int = 4) -> list[tuple[str, int]]:
    """k-word phrases that occur in at least ``min_count`` different texts: stock phrasing to review."""
    c: Counter[tuple[str, ...]] = Counter()
    for t in texts.values():
        c.update(shingles(t, k))
    return [(" ".join(g), n) for g, n in c.most_common() if n >= min_count]


def check_corpus(data_dir: Path | None = None, emotions: list[str] | None = None,
                 banned_file: Path | None = None, corpus: str = "v1", require_complete: bool = False) -> Report:
    """Check the stories of ``corpus`` ("v1", or "v2" = v1 plus the crossed v2 stories) and the other data sets.

    v2 is checked against its plan (writer, channel, person and topic of every story); while it is being
    written, missing stories are a warning, and the balance checks run once it is complete (``require_complete``
    makes an incomplete v2 an error).
    """
    from emolens.data.plan import check_v2
    from emolens.data.quotes import normalise_quotes, single_quoted_speech

    root = Path(data_dir or repo_data_dir())
    rep = Report()
    emos = load_emotions(root)
    n_topics = len(load_topics(root))
    index = {e.emotion: e.index for e in emos}
    banned = load_banned_words(root, banned_file)
    stories = load_stories(root, emotions, corpus=corpus)
    wanted = [e.emotion for e in emos] if emotions is None else emotions
    rep.counts["stories"] = len(stories)
    by_emotion: dict[str, list] = {}
    seen_ids: set[str] = set()
    for s in stories:
        by_emotion.setdefault(s.emotion, []).append(s)
        if s.id in seen_ids:
            rep.errors.append(f"{s.id}: duplicate id")
        seen_ids.add(s.id)
        if not 0 <= s.topic_id < n_topics:
            rep.errors.append(f"{s.id}: topic_id {s.topic_id} out of range 0..{n_topics - 1}")
        if s.slot < STORIES_PER_EMOTION and (s.topic_id, s.person) != planned_slot(index[s.emotion], s.slot):
            rep.errors.append(f"{s.id}: (topic_id, person) = {(s.topic_id, s.person)}, plan says "
                              f"{planned_slot(index[s.emotion], s.slot)}")
        n = len(words(s.text))
        if not MIN_WORDS <= n <= MAX_WORDS:
            rep.errors.append(f"{s.id}: {n} words, allowed {MIN_WORDS}-{MAX_WORDS}")
        if s.emotion not in banned.terms:
            rep.errors.append(f"{s.id}: no banned-word list for {s.emotion!r}")
        else:
            hits = banned.leaks(s.emotion, s.text)
            if hits:
                rep.errors.append(f"{s.id}: leaks banned word(s) {sorted(set(hits))}")
        if s.text != normalise_quotes(s.text):
            rep.errors.append(f"{s.id}: quotations must be in straight double quotes (found "
                              f"{single_quoted_speech(s.text)[:2] or 'curly quotes'}); "
                              f"emolens.data.quotes.normalise_quotes rewrites them")
    for emo in wanted:
        have = sum(1 for s in by_emotion.get(emo, []) if s.slot < STORIES_PER_EMOTION)
        if have != STORIES_PER_EMOTION:
            rep.errors.append(f"{emo}: {have} v1 stories, expected {STORIES_PER_EMOTION}")
    if corpus != "v1":
        check_v2([s for s in stories if s.slot >= STORIES_PER_EMOTION], [e for e in emos if e.emotion in wanted],
                 rep, require_complete and emotions is None)
        if emotions is None:
            check_dialogue_sets(root, rep, banned)
    texts = {s.id: s.text for s in stories}
    exact = Counter(" ".join(words(t)) for t in texts.values())
    rep.counts["exact_duplicates"] = sum(n - 1 for n in exact.values() if n > 1)
    if rep.counts["exact_duplicates"]:
        rep.errors.append(f"{rep.counts['exact_duplicates']} exact duplicate text(s)")
    dups = near_duplicates(texts)
    rep.counts["near_duplicates"] = len(dups)
    rep.errors += [f"near-duplicate stories {a} and {b} (Jaccard {j})" for a, b, j in dups]
    phrases = repeated_phrases(texts)
    rep.counts["repeated_6grams"] = len(phrases)
    rep.warnings += [f"phrase in {n} stories: '{p}'" for p, n in phrases[:20]]
    per_topic = Counter(s.topic_id for s in stories)
    if stories:
        rep.counts["topic_min"] = min(per_topic.get(t, 0) for t in range(n_topics))
        rep.counts["topic_max"] = max(per_topic.values())
        if emotions is None and corpus == "v1" and rep.counts["topic_max"] - rep.counts["topic_min"] > 2:
            rep.errors.append(f"topic balance: {rep.counts['topic_min']}-{rep.counts['topic_max']} stories per topic")
    if emotions is None:
        check_sets(root, rep)
    return rep


def check_dialogue_sets(root: Path, rep: Report, banned: Any) -> None:
    """The v2 neutral dialogues and the speaker and deflection dialogues: schema and plan (their loaders), no
    feeling named in a dialogue that carries it, neutral text kept neutral, no near duplicates; counts."""
    from emolens.data.dialogues import _never_named, deflection_plan, load_dialogues, speaker_plan
    from emolens.data.records import DataError
    from emolens.data.sets import load_neutral_dialogues

    try:
        neutral = load_neutral_dialogues(root, "v2")
        kinds = {"speakers": load_dialogues("speakers", root), "deflection": load_dialogues("deflection", root)}
    except DataError as e:
        rep.errors.append(str(e))
        return
    rep.counts["neutral_dialogues_v2"] = len(neutral)
    for d in neutral:
        for _, text in d.turns + ((("system", d.system),) if d.system else ()):
            m = NEUTRAL_FORBIDDEN.search(text)
            if m:
                rep.errors.append(f"{d.id}: neutral dialogue contains {m.group(0)!r}")
    plans = {"speakers": {p["id"]: p for p in speaker_plan()}, "deflection": {p["id"]: p for p in deflection_plan()}}
    for kind, ds in kinds.items():
        rep.counts[f"{kind}_dialogues"] = len(ds)
        for d in ds:
            for emo in _never_named(kind, plans[kind][d.id]):
                hits = banned.leaks(emo, d.text())
                if hits:
                    rep.errors.append(f"{d.id}: names {emo!r}: {sorted(set(hits))}")
        dups = near_duplicates({d.id: d.text() for d in ds})
        rep.errors += [f"near-duplicate {kind} dialogues {a} and {b} (Jaccard {j})" for a, b, j in dups]


# Words that would make a "neutral" dialogue emotional or chatty; the neutral set must contain none.
NEUTRAL_FORBIDDEN = re.compile(
    r"!|\b(happy|glad|sorry|thanks|thank|love|hate|sad|angry|afraid|worried|excited|unfortunately|fortunately|"
    r"luckily|enjoy|fun|frustrat\w*|exciting|wonderful|awesome|amazing|terrible|awful|apolog\w*|delighted)\b",
    re.IGNORECASE)
MIN_COUNTS = {"neutral_dialogues": 300, "implicit_scenarios": 36, "numeric_intensity": 6, "activities": 64,
              "user_assistant": 16, "minimal_pairs": 40, "negation_pairs": 20}


def check_sets(root: Path, rep: Report) -> None:
    """Schema and minimum counts of the neutral dialogues and evaluation sets; neutral text stays neutral."""
    from emolens.data.records import DataError
    from emolens.data.sets import load_all_sets

    try:
        sets = load_all_sets(root)
    except DataError as e:
        rep.errors.append(str(e))
        return
    for name, items in sets.items():
        rep.counts[name] = len(items)
        if len(items) < MIN_COUNTS[name]:
            rep.errors.append(f"{name}: {len(items)} records, at least {MIN_COUNTS[name]} required")
        ids = [x.id for x in items]
        if len(set(ids)) != len(ids):
            rep.errors.append(f"{name}: duplicate ids")
    for d in sets["neutral_dialogues"]:
        for _, text in d.turns:
            m = NEUTRAL_FORBIDDEN.search(text)
            if m:
                rep.errors.append(f"{d.id}: neutral dialogue contains {m.group(0)!r}")
    emos = {e.emotion for e in load_emotions(root)}
    for ua in sets["user_assistant"]:
        for e in (ua.user_emotion, ua.assistant_emotion):
            if e not in emos:
                rep.errors.append(f"{ua.id}: {e!r} is not one of the 171 emotion words")
