"""One vectors artifact that notebooks pass on: built once by the recipe, loaded everywhere after.

``load_or_build(model)`` returns the vectors for the default corpus and settings: from the file committed under
``data/vectors/`` when its key matches (so a reader can steer within seconds of cloning), else from the cache,
else built by the recipe and cached. The key names everything that shapes the vectors (model and weights,
dtype, layers, the stories and neutral texts by content hash, pooling, denoising), so a file made with other
settings or another corpus is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emolens.activations import Pooling, resolve_layers
from emolens.cache import CacheError, content_hash
from emolens.defaults import VARIANCE_FRACTION
from emolens.paths import cache_dir, data_dir
from emolens.vectors.core import FORMAT_VERSION, EmotionVectors
from emolens.vectors.recipe import EXTRACT_VERSION, corpus_activations, neutral_texts, neutral_version, select_emotions


def committed_path(model_name: str) -> Path:
    """Where a model's default vectors are committed: ``data/vectors/<model>.safetensors``."""
    return data_dir() / "vectors" / f"{model_name}.safetensors"


def vectors_key(spec: Any, emotions: str | Sequence[str] | None = "all", layers: Any = None,
                corpus: str | None = None, neutral_limit: int | None = None,
                variance_fraction: float = VARIANCE_FRACTION, pooling: Pooling = Pooling(),
                site: str = "resid_post", dtype: str | None = None) -> dict[str, Any]:
    """Everything that shapes a set of vectors, with the texts as content hashes. ``corpus`` defaults to
    :func:`emolens.defaults.corpus`; ``dtype`` (the dtype the stories were run in) to the model's."""
    from emolens.data import load_stories
    from emolens.defaults import corpus as default_corpus

    corpus = corpus or default_corpus()
    stories = load_stories(emotions=select_emotions(emotions), corpus=corpus)
    return {"model": spec.name, "weights": spec.weight_sha256 or spec.weight_source, "dtype": dtype or spec.dtype,
            "extract_version": EXTRACT_VERSION, "format": FORMAT_VERSION,
            "layers": resolve_layers(spec, layers if layers is not None else [spec.probe_layer]),
            "corpus": corpus, "stories": content_hash([[s.id, s.emotion, s.text] for s in stories]),
            "neutral": content_hash(neutral_texts(spec, neutral_limit, version=neutral_version(corpus))),
            "variance_fraction": variance_fraction,
            "pooling": pooling.as_dict(), "site": site}


def _matching(path: Path, key: dict[str, Any], model: str) -> EmotionVectors | None:
    if not path.exists():
        return None
    try:
        ev = EmotionVectors.load(path, expect_model=model)
    except (CacheError, ValueError):
        return None
    return ev if ev.settings.get("key") == key else None


def load_or_build(model: Any, emotions: str | Sequence[str] | None = "all", layers: Any = None,
                  corpus: str | None = None, neutral_limit: int | None = None,
                  variance_fraction: float = VARIANCE_FRACTION, pooling: Pooling = Pooling(),
                  progress: bool = True) -> EmotionVectors:
    """The vectors of ``model`` (``(bridge, spec)``) for the shipped corpus: committed file, cache, or recipe.

    ``layers`` defaults to the model's probe layer, ``corpus`` to :func:`emolens.defaults.corpus`. Building reads
    the stories only up to the deepest layer asked for, and caches the result under its key.

    The committed files are extracted in bfloat16 (notebook 02's full run; :func:`emolens.defaults.model_dtype`),
    and they also serve a float32 model: at the probe layer every bf16 vector agrees with its float32
    counterpart to cosine >= 0.9998 (``benchmarks/results/bf16_agreement.txt``). The returned vectors' key
    says which dtype made them. Anything else that differs (corpus, texts, layers, settings) is never matched.

    Example::

        model = load_model()
        vectors = load_or_build(model)              # seconds: the committed default vectors
        with vectors.steer(model, "desperate", alpha=0.1):
            ...
    """
    from emolens.defaults import model_dtype

    bridge, spec = model
    key = vectors_key(spec, emotions, layers, corpus, neutral_limit, variance_fraction, pooling)
    cached_path = cache_dir() / "vectors" / f"{content_hash(key)}.safetensors"
    for path in (committed_path(spec.name), cached_path):
        ev = _matching(path, key, spec.name)
        if ev is not None:
            return ev
    committed_dtype = model_dtype(fast=False)
    if spec.dtype == "float32" and committed_dtype == "bfloat16":
        ev = _matching(committed_path(spec.name), dict(key, dtype=committed_dtype), spec.name)
        if ev is not None:
            return ev
    acts = corpus_activations(bridge, spec, emotions=emotions, neutral_limit=neutral_limit, layers=key["layers"],
                              pooling=pooling, corpus=key["corpus"], progress=progress)
    ev = vectors_from(acts, spec, key)
    ev.save(cached_path)
    return ev


def vectors_from(acts: Any, spec: Any, key: dict[str, Any]) -> EmotionVectors:
    """The vectors of ``key`` from corpus activations that cover at least its layers (e.g. notebook 02's
    all-layer run), with the key recorded so that :func:`load_or_build` recognises them."""
    got = content_hash([[s.id, s.emotion, s.text] for s in acts.stories])
    if got != key["stories"] or acts.corpus != key["corpus"] or acts.pooling.as_dict() != key["pooling"]:
        raise ValueError("these activations were made from other stories or settings than the key describes")
    ev = acts.vectors(key["variance_fraction"], spec=spec)
    keep = [ev.layer_index(layer) for layer in key["layers"]]
    out = EmotionVectors(list(ev.emotions), list(key["layers"]), ev.raw[:, keep], ev.vectors[:, keep],
                         [ev.neutral_pcs[j] for j in keep], dict(ev.settings, key=key), dict(ev.provenance),
                         ev.centre[keep], ev.residual_norms[keep])
    return out
