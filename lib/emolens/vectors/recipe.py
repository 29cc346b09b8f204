"""The paper's extraction recipe end to end, cached by content hash and resumable after an interruption."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emolens.activations import (
    Pooling,
    accumulation_dtype,
    check_accumulation,
    checkpointed,
    neutral_statistics,
    pooled_means,
    resolve_layers,
)
from emolens.cache import cached, content_hash
from emolens.models.spec import ModelSpec
from emolens.paths import cache_dir
from emolens.provenance import provenance
from emolens.vectors.core import EmotionVectors, build_emotion_vectors

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from emolens.distributed import Ranks

EXTRACT_VERSION = 1  # bump when a change alters extracted numbers, so old caches are not reused


def rms_norms(mean: Any, cov: Any, n_tokens: int) -> Any:
    """Root-mean-square residual norm ``[L]`` of the neutral tokens, from their mean and covariance:
    E|x|^2 = trace(cov) (n-1)/n + |mean|^2. The typical norm that steering strength ``alpha`` is a fraction of."""
    import torch

    tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) * (n_tokens - 1) / n_tokens
    return (tr + (mean ** 2).sum(-1)).sqrt().float()


def _model_key(spec: ModelSpec) -> dict[str, Any]:
    return {"model": spec.name, "weights": spec.weight_sha256 or spec.weight_source, "dtype": spec.dtype,
            "version": EXTRACT_VERSION}


def story_key(spec: ModelSpec, texts: Sequence[str], layers: list[int], pooling: Pooling, site: str) -> dict[str, Any]:
    """The cache key of per-story pooled means: every setting that shapes them, the texts by content hash.
    Shared by the single-process and the distributed paths, which store the same result under it."""
    return dict(_model_key(spec), layers=layers, pooling=pooling.as_dict(), site=site, texts=content_hash(list(texts)))


def story_check(n_texts: int, n_layers: int, d_model: int) -> Any:
    """A cache check refusing per-story activations of the wrong shape (a result is never stored or used then)."""

    def check(t: dict[str, Any], meta: dict[str, Any]) -> None:
        want = (n_texts, n_layers, d_model)
        if tuple(t["means"].shape) != want or tuple(t["counts"].shape) != (n_texts,):
            raise ValueError(f"activations have shape {tuple(t['means'].shape)}, expected {want}: not cached")
    return check


def neutral_key(spec: ModelSpec, texts: Sequence[str], layers: list[int], site: str,
                accumulate: str | None = None) -> dict[str, Any]:
    """The cache key of the neutral statistics. The accumulation dtype enters it only when it is not float64,
    the one dtype used before there was a choice, so caches made then keep their key."""
    acc = check_accumulation(accumulate or accumulation_dtype(spec.dtype))
    key = dict(_model_key(spec), layers=layers, site=site, neutral=content_hash(list(texts)))
    return key if acc == "float64" else dict(key, accumulate=acc)


def story_activations(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layers: Any = None,
                      pooling: Pooling = Pooling(), site: str = "resid_post", batch_size: int = 8,
                      chunk_size: int = 128, progress: bool = True, folder: Path | None = None,
                      refresh: bool = False, ranks: Ranks | None = None) -> tuple[Any, Any]:
    """Per-story pooled means ``[n, L, d]`` and token counts, cached; long runs checkpoint every chunk.

    ``ranks`` (from :func:`emolens.distributed.init_ranks`) splits the texts over the processes of a
    ``torchrun`` launch; rank 0 gets the reduced result and caches it under this same key, the other ranks
    get ``(None, None)``.
    """
    import torch

    layers = resolve_layers(spec, layers)
    key = story_key(spec, texts, layers, pooling, site)
    root = Path(folder or cache_dir() / "activations")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if ranks is not None:
        from emolens.distributed import sharded_story_activations

        return sharded_story_activations(bridge, spec, texts, layers, pooling, site, batch_size, chunk_size,
                                         progress, root, refresh, ranks)
    n_chunks = max(1, -(-len(texts) // chunk_size))
    # the chunking is part of the checkpoint key: chunks cut at another size never mix
    ck_key = dict(key, chunk_size=chunk_size, n_chunks=n_chunks)

    def compute() -> tuple[dict[str, Any], dict[str, Any]]:

        def one(c: int) -> dict[str, Any]:
            part = texts[c * chunk_size:(c + 1) * chunk_size]
            m, k = pooled_means(bridge, spec, part, layers, pooling, site, batch_size, progress=progress)
            return {"means": m, "counts": k}

        parts = checkpointed(n_chunks, root / "checkpoints", ck_key, one, progress)
        means = torch.cat([p["means"] for p in parts])
        counts = torch.cat([p["counts"] for p in parts])
        return {"means": means, "counts": counts}, {"n_texts": len(texts)}

    check = story_check(len(texts), len(layers), spec.d_model)
    t, _ = cached("activations", key, compute, folder=root, refresh=refresh, check=check)
    tag = content_hash(ck_key)
    for stale in (root / "checkpoints").glob(f"{tag}-chunk*"):
        stale.unlink()  # the assembled result is stored; its chunks are no longer needed
    return t["means"], t["counts"]


def neutral_covariance(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layers: Any = None,
                       site: str = "resid_post", batch_size: int = 8, progress: bool = True,
                       folder: Path | None = None, accumulate: str | None = None, refresh: bool = False,
                       ranks: Ranks | None = None) -> dict[str, Any]:
    """Mean and covariance of the neutral texts' pooled tokens at ``layers``, cached; ``accumulate`` is the
    accumulation dtype (default by the model's dtype: :func:`emolens.activations.accumulation_dtype`);
    ``ranks`` shares the texts among ``torchrun`` processes (as in :func:`story_activations`)."""
    layers = resolve_layers(spec, layers)
    key = neutral_key(spec, texts, layers, site, accumulate)
    if ranks is not None:
        from emolens.distributed import sharded_neutral_covariance

        return sharded_neutral_covariance(bridge, spec, texts, layers, site, batch_size, progress,
                                          Path(folder or cache_dir() / "neutral"), accumulate, refresh, ranks)

    def compute() -> tuple[dict[str, Any], dict[str, Any]]:
        st = neutral_statistics(bridge, spec, texts, layers, site, batch_size, progress=progress,
                                accumulate=accumulate)
        return {"mean": st["mean"], "cov": st["cov"]}, {"n_tokens": st["n_tokens"]}

    t, meta = cached("neutral", key, compute, folder=folder, refresh=refresh)
    return {"mean": t["mean"], "cov": t["cov"], "n_tokens": meta["n_tokens"], "layers": layers}


def emotion_vectors(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], labels: Sequence[str],
                    neutral_texts: Sequence[str] | None, emotions: Sequence[str] | None = None,
                    layers: Any = None, pooling: Pooling = Pooling(), site: str = "resid_post",
                    variance_fraction: float | None = 0.5, n_components: int | None = None,
                    batch_size: int = 8, progress: bool = True, corpus_id: str | None = None,
                    folder: Path | None = None) -> EmotionVectors:
    """The paper's recipe on any stories: ``texts`` with emotion ``labels`` and neutral texts in, EmotionVectors
    out (all layers by default). Activations are cached by content hash and resume after an interruption.

    Example::

        ev = emotion_vectors(bridge, spec, [s.text for s in stories], [s.emotion for s in stories],
                             neutral_texts(spec), layers=[spec.probe_layer])
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    emotions = list(emotions) if emotions is not None else list(dict.fromkeys(labels))
    missing = [e for e in emotions if e not in set(labels)]
    if missing:
        raise ValueError(f"emotion(s) with no stories: {missing}")
    layers = resolve_layers(spec, layers)
    means, counts = story_activations(bridge, spec, texts, layers, pooling, site, batch_size, progress=progress,
                                      folder=folder)
    cov = norms = None
    if neutral_texts:
        nc = neutral_covariance(bridge, spec, neutral_texts, layers, site, batch_size, progress, folder)
        cov, norms = nc["cov"], rms_norms(nc["mean"], nc["cov"], nc["n_tokens"])
    settings = {"pooling": pooling.as_dict(), "site": site,
                "corpus": corpus_id or content_hash([list(texts), list(labels)]),
                "neutral": content_hash(list(neutral_texts or [])), "n_neutral": len(neutral_texts or [])}
    return build_emotion_vectors(means, counts, list(labels), emotions, layers, cov, variance_fraction,
                                 n_components, pooling.weighting, settings, provenance(spec), norms)


@dataclass
class CorpusActivations:
    """The shipped corpus run through one model: per-story pooled means and the neutral covariance."""

    stories: list[Any]
    means: Any  # [n_stories, L, d]
    counts: Any  # [n_stories]
    layers: list[int]
    neutral_cov: Any  # [L, d, d]
    neutral_mean: Any  # [L, d]
    n_neutral: int
    n_neutral_tokens: int
    pooling: Pooling
    emotions: list[str]
    site: str = "resid_post"
    corpus: str = "v1"

    @property
    def labels(self) -> list[str]:
        return [s.emotion for s in self.stories]

    @property
    def topic_ids(self) -> list[int]:
        return [s.topic_id for s in self.stories]

    def vectors(self, variance_fraction: float | None = 0.5, n_components: int | None = None,
                spec: ModelSpec | None = None) -> EmotionVectors:
        """The paper's vectors from these activations (give ``spec`` so they carry the model's identity)."""
        norms = rms_norms(self.neutral_mean, self.neutral_cov, self.n_neutral_tokens)
        return build_emotion_vectors(self.means, self.counts, self.labels, self.emotions, self.layers,
                                     self.neutral_cov, variance_fraction, n_components, self.pooling.weighting,
                                     {"pooling": self.pooling.as_dict(), "n_neutral": self.n_neutral,
                                      "site": self.site, "corpus": self.corpus},
                                     provenance(spec) if spec else None, norms)


def neutral_version(corpus: str) -> str:
    """The neutral dialogues that go with a story corpus: v1's 360 with v1, all 1,360 with v2."""
    return "v2" if corpus.startswith("v2") else "v1"


def neutral_texts(spec: ModelSpec, limit: int | None = None, data_dir: Path | None = None,
                  version: str = "v1") -> list[str]:
    """The neutral dialogues formatted as the model reads a conversation (its chat template, or Human/Assistant)."""
    from emolens.data.sets import load_neutral_dialogues

    return [spec.format_chat(d.messages()) for d in load_neutral_dialogues(data_dir, version)[:limit]]


def spread_per_emotion(stories: Sequence[Any], n: int) -> list[Any]:
    """``n`` stories per emotion spread over its writers, for subsampled runs of the larger models.

    Taking each emotion's first ``n`` would take v2's block-written v1 stories first and bring back the
    writer-emotion confound; instead writers are taken in turn (each emotion starting at a different writer, so
    every writer appears about equally often over the emotions), each writer's stories in slot order from a
    rotating start (v2 plans topic and channel by slot, so both spread too). On v1, one writer per
    emotion, this is ``n`` consecutive slots from a start that rotates over the emotions.
    The kept stories stay in corpus order.
    """
    from collections import defaultdict

    by_emotion: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for s in stories:
        by_emotion[s.emotion][s.author].append(s)
    kept: set[int] = set()
    for e_pos, writers in enumerate(by_emotion.values()):
        names = sorted(writers)
        names = names[e_pos % len(names):] + names[:e_pos % len(names)]
        # each writer starts at a different slot (v2 plans topic and channel by slot: the same first slot for
        # every writer would put most of a subsample in one topic fold)
        queues = [sorted(writers[w], key=lambda s: s.slot) for w in names]
        queues = [q[(e_pos + i) % len(q):] + q[:(e_pos + i) % len(q)] for i, q in enumerate(queues)]
        turn = [s for depth in range(max(map(len, queues))) for q in queues if depth < len(q) for s in [q[depth]]]
        kept.update(id(s) for s in turn[:n])
    return [s for s in stories if id(s) in kept]


def select_emotions(emotions: str | Sequence[str] | None, data_dir: Path | None = None) -> list[str] | None:
    """``None``/"all" -> all 171; "exemplars" -> the paper's 12; a list is passed through."""
    from emolens.data import load_emotions

    if emotions is None or emotions == "all":
        return None
    if emotions == "exemplars":
        return [e.emotion for e in load_emotions(data_dir) if e.exemplar]
    if isinstance(emotions, str):
        raise ValueError(f"emotions={emotions!r}: give 'all', 'exemplars' or a list of emotion words")
    return list(emotions)


def corpus_inputs(spec: ModelSpec, emotions: str | Sequence[str] | None = None,
                  stories_per_emotion: int | None = None, neutral_limit: int | None = None, corpus: str = "v1",
                  data_dir: Path | None = None) -> tuple[list[Any], list[str]]:
    """The stories and the formatted neutral texts that :func:`corpus_activations` runs, chosen the same way."""
    from emolens.data import load_stories

    stories = load_stories(data_dir, emotions=select_emotions(emotions, data_dir), corpus=corpus)
    if stories_per_emotion is not None:
        stories = spread_per_emotion(stories, stories_per_emotion)
    if not stories:
        raise ValueError("no stories found in data/stories for the emotions asked for")
    return stories, neutral_texts(spec, neutral_limit, data_dir, neutral_version(corpus))


def corpus_activations(bridge: TransformerBridge, spec: ModelSpec, emotions: str | Sequence[str] | None = None,
                       stories_per_emotion: int | None = None, neutral_limit: int | None = None,
                       layers: Any = None, pooling: Pooling = Pooling(), site: str = "resid_post",
                       batch_size: int = 8, progress: bool = True, corpus: str = "v1",
                       data_dir: Path | None = None, ranks: Ranks | None = None,
                       refresh: bool = False) -> CorpusActivations:
    """Run the shipped stories (all, or a subset) and neutral dialogues through the model, with caching.

    ``emotions``: "all", "exemplars" or a list; ``corpus``: "v1", "v2" or "v2-new" (see
    :func:`emolens.data.load_stories`); ``stories_per_emotion`` keeps n stories per emotion spread over
    its writers (:func:`spread_per_emotion`).
    ``data_dir`` reads another corpus laid out like ``data/`` (emotions.jsonl, stories/, neutral_dialogues.jsonl):
    a fork's own stories go through exactly the same recipe. ``ranks`` runs it data-parallel under
    ``torchrun`` (``python -m emolens.extract_corpus``); ``refresh`` recomputes instead of reading the caches.
    """
    stories, neutral = corpus_inputs(spec, emotions, stories_per_emotion, neutral_limit, corpus, data_dir)
    emos = list(dict.fromkeys(s.emotion for s in stories))
    layers = resolve_layers(spec, layers)
    texts = [s.text for s in stories]
    means, counts = story_activations(bridge, spec, texts, layers, pooling, site, batch_size, progress=progress,
                                      refresh=refresh, ranks=ranks)
    nc = neutral_covariance(bridge, spec, neutral, layers, site, batch_size, progress, refresh=refresh, ranks=ranks)
    return CorpusActivations(stories, means, counts, layers, nc["cov"], nc["mean"], len(neutral), nc["n_tokens"],
                             pooling, emos, site, corpus)
