"""Emotion vectors: the :class:`EmotionVectors` object, the paper's recipe (``emotion_vectors``), the shipped
corpus run through a model (``corpus_activations``), and the one artifact notebooks pass on (``load_or_build``).

The recipe (paper section 3.1): the mean residual over each story's tokens from the 50th on, averaged per
emotion; minus the mean over emotions; then the top principal components of neutral-dialogue activations that
together explain ``variance_fraction`` of their variance are projected out, layer by layer.
"""

from emolens.vectors.artifact import committed_path, load_or_build, vectors_from, vectors_key
from emolens.vectors.core import (
    FORMAT_VERSION,
    EmotionVectors,
    build_emotion_vectors,
    denoising_kept,
    emotion_means,
    neutral_components,
    project_out,
    variance_curve,
)
from emolens.vectors.recipe import (
    EXTRACT_VERSION,
    CorpusActivations,
    corpus_activations,
    emotion_vectors,
    neutral_covariance,
    neutral_texts,
    rms_norms,
    select_emotions,
    spread_per_emotion,
    story_activations,
)

__all__ = ["EXTRACT_VERSION", "FORMAT_VERSION", "CorpusActivations", "EmotionVectors", "build_emotion_vectors", "denoising_kept",
           "committed_path", "corpus_activations", "emotion_means", "emotion_vectors", "spread_per_emotion",
           "load_or_build", "neutral_components", "neutral_covariance", "neutral_texts", "project_out", "rms_norms",
           "select_emotions", "story_activations", "variance_curve", "vectors_from", "vectors_key"]
