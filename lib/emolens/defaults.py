"""Shared parameters of the collection and the paper's reference numbers, each in one place.

Notebooks read their settings from here (and from the environment, for the model and fast mode), so that a
parameter that must agree across notebooks cannot drift apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# ---- the recipe -------------------------------------------------------------------------------------------
POOL_START = 50  # average each story's residuals from its 50th own token on (paper section 3.1)
VARIANCE_FRACTION = 0.5  # project out the neutral PCs that together explain this share of variance
NEUTRAL_LIMIT_FAST = 60  # neutral dialogues used in fast mode (all of them otherwise)
N_FOLDS = 5  # topic folds for held-out checks: fold = topic_id % 5


def fast_mode() -> bool:
    """``EMOLENS_FAST=1``: the tests' fast mode (exemplar emotions, fewer resamples)."""
    return os.environ.get("EMOLENS_FAST", "0") == "1"


def model_name() -> str:
    """``EMOLENS_MODEL`` or the default embedded model."""
    from emolens.models.embedded import DEFAULT_MODEL

    return os.environ.get("EMOLENS_MODEL", DEFAULT_MODEL)


CORPORA = ("v1", "v2")
DEFAULT_CORPUS = "v2"  # what the committed results and vectors are made from


def corpus() -> str:
    """``EMOLENS_CORPUS``: "v2" (the default and the committed results: v1's 12 block-written stories per emotion
    plus 40 crossed by writer and channel) or "v1" (the 12 alone, to compare with the first results)."""
    c = os.environ.get("EMOLENS_CORPUS", DEFAULT_CORPUS)
    if c not in CORPORA:
        raise ValueError(f"EMOLENS_CORPUS={c!r}: allowed {', '.join(CORPORA)}")
    return c


DTYPES = ("float32", "bfloat16")


def model_dtype(fast: bool | None = None) -> str:
    """``EMOLENS_DTYPE``, else bfloat16 for full runs and float32 in fast mode.

    bf16 extracts the full corpus 2.6x faster here and agrees with float32 at the probe layer to cosine >= 0.9998
    for every emotion (``benchmarks/results/bf16_agreement.txt``); fast mode stays float32 so that the golden
    numbers test the reference arithmetic.
    """
    d = os.environ.get("EMOLENS_DTYPE") or ("float32" if (fast_mode() if fast is None else fast) else "bfloat16")
    if d not in DTYPES:
        raise ValueError(f"EMOLENS_DTYPE={d!r}: allowed {', '.join(DTYPES)}")
    return d


def neutral_limit(fast: bool | None = None) -> int | None:
    return NEUTRAL_LIMIT_FAST if (fast_mode() if fast is None else fast) else None


def emotion_set(fast: bool | None = None) -> str:
    """Which emotions the notebooks use: the 12 exemplars in fast mode, all 171 otherwise."""
    return "exemplars" if (fast_mode() if fast is None else fast) else "all"


@dataclass(frozen=True)
class OtherModel:
    """A model of the cross-model comparisons, with the subsample that keeps it practical on 2 CPU cores."""

    name: str
    stories_per_emotion: int | None  # None: all; else spread over writers (vectors.spread_per_emotion)
    neutral_limit: int | None
    dtype: str


# The cross-model table of notebook 04 and tools/extract_models.py share these, so their caches agree.
OTHER_MODELS = (
    OtherModel("gemma-3-270m", 6, None, "float32"),  # spread over writers, slots and so topics
    OtherModel("qwen2.5-coder-0.5b-instruct", 4, 120, "float32"),
    OtherModel("qwen2.5-coder-1.5b-instruct", 2, 40, "bfloat16"),  # bf16: 2x faster here (benchmarks/)
)


def other_model(name: str) -> OtherModel:
    """The settings of one model of :data:`OTHER_MODELS` (so notebook 03's second model shares 04's cache)."""
    for m in OTHER_MODELS:
        if m.name == name:
            return m
    raise ValueError(f"{name!r} is not one of the other models: {', '.join(m.name for m in OTHER_MODELS)}")


def other_models(selection: str | None = None) -> list[OtherModel]:
    """``EMOLENS_OTHER_MODELS``: "all", "none" (the fast-mode default) or a comma-separated list of names."""
    sel = selection or os.environ.get("EMOLENS_OTHER_MODELS", "none" if fast_mode() else "all")
    if sel == "all":
        return list(OTHER_MODELS)
    names = {s.strip() for s in sel.split(",") if s.strip()} - {"none"}
    unknown = names - {m.name for m in OTHER_MODELS}
    if unknown:
        raise ValueError(f"unknown model(s) in EMOLENS_OTHER_MODELS: {sorted(unknown)}; "
                         f"allowed: all, none, {', '.join(m.name for m in OTHER_MODELS)}")
    return [m for m in OTHER_MODELS if m.name in names]


# ---- the paper's numbers (Sofroniew et al. 2026), with where they come from ---------------------------------
@dataclass(frozen=True)
class PaperValue:
    value: float
    source: str


PAPER = {
    "pc1_valence_r": PaperValue(0.81, "Figure 8: PC1 vs human pleasure (Russell & Mehrabian norms, 45 emotions)"),
    "pc2_arousal_r": PaperValue(0.66, "Figure 8: PC2 vs human arousal (Russell & Mehrabian norms, 45 emotions)"),
    "pc1_variance": PaperValue(0.26, "Figure 7: variance explained by PC1"),
    "pc2_variance": PaperValue(0.15, "Figure 7: variance explained by PC2"),
    "probe_elo_blissful_r": PaperValue(0.71, "Figure 4 row 2: blissful probe on the activity tokens vs Elo, 64 activities"),
    "probe_elo_hostile_r": PaperValue(-0.74, "Figure 4 row 3: hostile probe vs Elo"),
    "steer_elo_blissful": PaperValue(212, "Figure 4 row 2: mean Elo shift of steered activities, blissful"),
    "steer_elo_hostile": PaperValue(-303, "Figure 4 row 3: mean Elo shift of steered activities, hostile"),
    "probe_r_vs_steer_shift_r": PaperValue(0.85, "Figure 4 row 4: probe-Elo r vs mean Elo shift across 35 emotions"),
    "user_assistant_r": PaperValue(0.11, "Figure 10: probes at the user's last token vs the Assistant colon"),
    "colon_predicts_reply_r": PaperValue(0.87, "Figure 11: Assistant-colon probe vs the reply's mean probe"),
    "user_predicts_reply_r": PaperValue(0.59, "Figure 11: user-token probe vs the reply's mean probe"),
    "preference_r_vs_valence_r": PaperValue(0.76, "Figure 56: probe-preference r vs LLM-judged valence"),
}


def paper(key: str) -> float:
    """The paper's value for ``key`` (see ``PAPER`` for its figure)."""
    if key not in PAPER:
        raise KeyError(f"no paper value {key!r}; known: {sorted(PAPER)}")
    return PAPER[key].value
