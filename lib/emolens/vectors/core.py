"""EmotionVectors: per-emotion means, grand-mean centring and neutral-PC projection, stored with provenance.

The recipe (paper section 3.1): the mean residual over each story's tokens from the 50th on, averaged per
emotion; minus the mean over emotions; then the top principal components of neutral-dialogue activations
that together explain ``variance_fraction`` of their variance are projected out, layer by layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emolens.cache import load_tensors, save_tensors

if TYPE_CHECKING:
    import numpy as np
    import torch

    from emolens.models.spec import Model, ModelSpec

FORMAT_VERSION = 2  # 2: centre and per-layer residual norms stored beside the vectors


def emotion_means(story_means: Any, counts: Any, labels: Sequence[str], emotions: Sequence[str],
                  weighting: str = "story") -> tuple[Any, dict[str, int]]:
    """Per-emotion means ``[E, L, d]`` of per-story means; stories with count 0 are skipped (and counted)."""
    import torch

    E = len(emotions)
    out = torch.zeros((E,) + tuple(story_means.shape[1:]), dtype=torch.float32)
    skipped: dict[str, int] = {}
    for e, emo in enumerate(emotions):
        idx = [i for i, lab in enumerate(labels) if lab == emo and int(counts[i]) > 0]
        bad = sum(1 for i, lab in enumerate(labels) if lab == emo and int(counts[i]) == 0)
        if bad:
            skipped[emo] = bad
        if not idx:
            raise ValueError(f"emotion {emo!r} has no story with tokens in the pooling window")
        x = story_means[idx]
        if weighting == "token":
            w = counts[idx].float().view(-1, *([1] * (x.dim() - 1)))
            out[e] = (x * w).sum(0) / w.sum()
        else:
            out[e] = x.mean(0)
    return out, skipped


def neutral_components(cov: torch.Tensor, variance_fraction: float | None = 0.5,
                       n_components: int | None = None) -> torch.Tensor:
    """Top eigenvectors ``[k, d]`` of one layer's covariance: the fewest that reach ``variance_fraction``
    of the total variance, or exactly ``n_components`` when that is given (it takes precedence)."""
    import torch

    if variance_fraction is None and n_components is None:
        raise ValueError("give variance_fraction or n_components")
    # one thread: a 1k x 1k eigh gains nothing from two, and a busy second core makes LAPACK's threads
    # spin-wait (measured: 0.05 s single-threaded vs 8 s with two threads beside another process)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evals, evecs = torch.linalg.eigh(cov.double())
    finally:
        torch.set_num_threads(n)
    evals, evecs = evals.flip(0).clamp(min=0), evecs.flip(1)
    if n_components is None:
        if not 0 < variance_fraction <= 1:
            raise ValueError(f"variance_fraction must be in (0, 1], got {variance_fraction}")
        frac = evals.cumsum(0) / evals.sum()
        k = int((frac < variance_fraction - 1e-12).sum()) + 1
    else:
        k = int(n_components)
    return evecs[:, :k].T.float()


def project_out(x: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Remove the span of orthonormal ``components [k, d]`` from the last axis of ``x``."""
    if components.shape[0] == 0:
        return x.clone()
    return x - (x @ components.T) @ components


@dataclass
class EmotionVectors:
    """Emotion vectors of one model at several layers; everything that made them is in ``settings``.

    ``vectors`` are the paper's vectors (per-emotion means, centred on the mean over emotions, neutral PCs
    projected out); ``raw`` the per-emotion means; ``centre`` the mean they were centred on; ``residual_norms``
    the typical (root-mean-square) residual norm per layer on neutral text, the unit of steering strength.

    Example::

        vectors = load_or_build(model)                       # the default corpus and settings, cached
        vectors.at(19)                                       # [171, d] at layer 19
        scores = vectors.score_texts(model, ["..."], 19)     # held-out scoring, as in validation
        with vectors.steer(model, "calm", alpha=0.1, layers=19):
            print(reply(*model, "How is your day going?"))
    """

    emotions: list[str]
    layers: list[int]
    raw: torch.Tensor  # [E, L, d] per-emotion means
    vectors: torch.Tensor  # [E, L, d] centred and denoised
    neutral_pcs: list[torch.Tensor]  # per layer, [k_l, d]
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    centre: Any = None  # [L, d] mean of the raw means over the emotions the vectors were built from
    residual_norms: Any = None  # [L] typical residual norm per layer (NaN where not measured)

    def __post_init__(self) -> None:
        E, L = len(self.emotions), len(self.layers)
        if tuple(self.vectors.shape[:2]) != (E, L) or self.raw.shape != self.vectors.shape:
            raise ValueError(f"vector shapes {tuple(self.vectors.shape)} do not match {E} emotions x {L} layers")
        if len(set(self.emotions)) != E:
            raise ValueError("emotion names must be unique")
        if self.centre is None:
            self.centre = self.raw.mean(0)
        if self.residual_norms is None:
            import torch

            self.residual_norms = torch.full((L,), float("nan"))

    # ---- identity -----------------------------------------------------------------------------------
    @property
    def model(self) -> str | None:
        """The name of the model these vectors were read from (``provenance['model']``)."""
        return self.provenance.get("model")

    def check_model(self, spec: ModelSpec) -> None:
        """Refuse to be used with another model than the one that made these vectors."""
        if self.model is None:
            raise ValueError("these vectors carry no model identity (provenance['model'] is missing), so they cannot be "
                             f"checked against {spec.name!r}; build them with the model's spec")
        if self.model != spec.name:
            raise ValueError(f"these vectors were read from {self.model!r}; they cannot be used with {spec.name!r}")
        if self.vectors.shape[-1] != spec.d_model:
            raise ValueError(f"vectors have width {self.vectors.shape[-1]}, {spec.name} has d_model {spec.d_model}")

    # ---- access -------------------------------------------------------------------------------------
    def layer_index(self, layer: int) -> int:
        """Position of ``layer`` in ``self.layers``. Layers are 0-indexed blocks of the model; as everywhere in
        emolens, a negative layer counts from the model's end (-1 is its last block)."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int (a block index), got {layer!r} of type {type(layer).__name__}")
        if layer < 0:
            n = self.provenance.get("n_layers")
            if n is None:
                raise ValueError(f"layer {layer}: a negative layer needs the model's depth, which these vectors do "
                                 f"not record; give one of {self.layers}")
            layer += int(n)
        if layer not in self.layers:
            raise ValueError(f"layer {layer} not in these vectors; available: {self.layers}")
        return self.layers.index(layer)

    def emotion_index(self, emotion: str) -> int:
        if emotion not in self.emotions:
            raise KeyError(f"emotion {emotion!r} not in these vectors ({len(self.emotions)} emotions)")
        return self.emotions.index(emotion)

    def at(self, layer: int, unit: bool = False, denoised: bool = True) -> torch.Tensor:
        """``[E, d]`` vectors at ``layer``; ``denoised=False`` gives centred raw means (no neutral projection)."""
        j = self.layer_index(layer)
        x = self.vectors[:, j] if denoised else self.centred_raw()[:, j]
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12) if unit else x

    def vector(self, emotion: str, layer: int, unit: bool = False) -> torch.Tensor:
        """One emotion's ``[d]`` vector at ``layer`` (same defaults as :meth:`at`)."""
        return self.at(layer, unit=unit)[self.emotion_index(emotion)]

    def centred_raw(self) -> torch.Tensor:
        """Raw means minus the centre of the emotions the vectors were built from."""
        return self.raw - self.centre[None]

    def subset(self, emotions: Sequence[str]) -> "EmotionVectors":
        """The same vectors for fewer emotions. Nothing is recomputed: raw and denoised views both stay centred
        on the full set they were built from (so a subset's vectors equal the full set's rows)."""
        idx = [self.emotion_index(e) for e in emotions]
        return EmotionVectors(list(emotions), list(self.layers), self.raw[idx], self.vectors[idx],
                              self.neutral_pcs, dict(self.settings), dict(self.provenance), self.centre,
                              self.residual_norms)

    def residual_norm(self, layer: int) -> float:
        """The typical residual norm at ``layer`` measured with these vectors (the unit of ``alpha``)."""
        import math

        v = float(self.residual_norms[self.layer_index(layer)])
        if math.isnan(v):
            raise ValueError(f"these vectors carry no residual norm for layer {layer}; build them with neutral texts "
                             "or pass the norm to emolens.interventions.steering yourself")
        return v

    def _layers(self, layers: int | Sequence[int] | None) -> list[int]:
        if layers is None:
            if len(self.layers) != 1:
                raise ValueError(f"these vectors hold layers {self.layers}: say which to use with layers=...")
            return list(self.layers)
        out = [layers] if isinstance(layers, int) else list(layers)
        return [self.layers[self.layer_index(layer)] for layer in out]

    @contextmanager
    def steer(self, model: Model, emotion: str, alpha: float, layers: int | Sequence[int] | None = None,
              from_position: int = 0, site: str = "resid_post", spans: Sequence[Sequence[Any]] | None = None,
              lengths: Sequence[int] | None = None, padding_side: str = "right") -> Iterator[None]:
        """Add ``alpha`` x (typical residual norm) along ``emotion``'s vector at each of ``layers`` (the vector
        and the norm of that layer), for positions >= ``from_position``; hooks are removed on exit.

        With ``spans`` (one list of ``(start, end)`` token spans per batch row, e.g. from
        :func:`emolens.interventions.text_span`), only the tokens inside the spans are steered
        (:func:`emolens.interventions.span_steering`; ``lengths`` place them under left padding).

        ``model`` is ``(bridge, spec)`` as :func:`emolens.models.load_model` returns it; vectors of another model
        are refused.
        """
        from emolens.interventions import span_steering, steering

        bridge, spec = model
        self.check_model(spec)
        e = self.emotion_index(emotion)
        if spans is not None:
            if from_position:
                raise ValueError("give spans or from_position, not both")
            layers_ = self._layers(layers)
            with span_steering(bridge, spec, {la: self.vectors[e, self.layer_index(la)] for la in layers_}, layers_,
                               alpha, {la: self.residual_norm(la) for la in layers_}, spans, lengths, padding_side,
                               site):
                yield
            return
        with ExitStack() as stack:
            for layer in self._layers(layers):
                j = self.layer_index(layer)
                stack.enter_context(steering(bridge, spec, self.vectors[e, j], layer, alpha,
                                             self.residual_norm(layer), site, from_position))
            yield

    @contextmanager
    def ablate(self, model: Model, emotions: str | Sequence[str], layers: int | Sequence[int] | None = None,
               site: str = "resid_post") -> Iterator[None]:
        """Project the span of the given emotions' vectors out of the residual at ``layers``."""
        from emolens.interventions import ablation

        bridge, spec = model
        self.check_model(spec)
        names = [emotions] if isinstance(emotions, str) else list(emotions)
        idx = [self.emotion_index(e) for e in names]
        with ExitStack() as stack:
            for layer in self._layers(layers):
                stack.enter_context(ablation(bridge, spec, self.vectors[idx, self.layer_index(layer)], layer, site))
            yield

    def scores(self, pooled: torch.Tensor, layer: int, denoised: bool = True) -> np.ndarray:
        """Cosine scores ``[n, E]`` of pooled story activations ``[n, d]`` at ``layer``, read the way the vectors
        were made: minus the vectors' centre, the neutral PCs projected out (``denoised``), then compared.
        This is how validation scores held-out stories; use it (or :meth:`score_texts`) for any new text."""
        from emolens.stats import cosine

        j = self.layer_index(layer)
        x = pooled.float() - self.centre[j]
        if denoised:
            x = project_out(x, self.neutral_pcs[j])
        v = self.vectors[:, j] if denoised else self.centred_raw()[:, j]
        return cosine(x, v)

    def score_texts(self, model: Model, texts: Sequence[str], layer: int, denoised: bool = True,
                    batch_size: int = 8) -> Any:
        """Scores ``[n, E]`` of new texts, pooled with the vectors' own pooling settings (from token 50 by
        default); texts too short for the window get NaN rows."""
        import numpy as np

        from emolens.activations import Pooling, pooled_means

        bridge, spec = model
        self.check_model(spec)
        pooling = Pooling(**self.settings.get("pooling", {}))
        means, counts = pooled_means(bridge, spec, texts, [self.layers[self.layer_index(layer)]], pooling,
                                     self.settings.get("site", "resid_post"), batch_size, progress=False)
        out = self.scores(means[:, 0].nan_to_num(), layer, denoised)
        out[np.asarray(counts) == 0] = np.nan
        return out

    # ---- storage ------------------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Safetensors plus a JSON sidecar (names, layers, settings, provenance); never a pickle."""
        path = Path(path).with_suffix(".safetensors")
        tensors = {"raw": self.raw, "vectors": self.vectors, "centre": self.centre,
                   "residual_norms": self.residual_norms}
        tensors.update({f"neutral_pcs.{layer}": pc for layer, pc in zip(self.layers, self.neutral_pcs)})
        save_tensors(path, tensors, {"format": FORMAT_VERSION, "emotions": self.emotions, "layers": self.layers,
                                     "settings": self.settings, "provenance": self.provenance})
        return path

    @classmethod
    def load(cls, path: Path, expect_model: str | None = None) -> "EmotionVectors":
        """Load vectors saved by :meth:`save`. The sidecar (names, layers, settings, provenance) is covered by its
        digest, so an edited file is refused. The model is checked here when ``expect_model`` is given, and in any
        case by every call that takes both a model and vectors (:meth:`check_model`)."""
        t, meta = load_tensors(Path(path).with_suffix(".safetensors"))
        model = meta.get("provenance", {}).get("model")
        if expect_model is not None and model != expect_model:
            raise ValueError(f"{path} holds vectors of model {model!r}, not {expect_model!r}")
        layers = meta["layers"]
        return cls(meta["emotions"], layers, t["raw"], t["vectors"], [t[f"neutral_pcs.{layer}"] for layer in layers],
                   meta["settings"], meta["provenance"], t.get("centre"), t.get("residual_norms"))


def build_emotion_vectors(story_means: Any, counts: Any, labels: Sequence[str], emotions: Sequence[str],
                          layers: Sequence[int], neutral_cov: Any | None, variance_fraction: float | None = 0.5,
                          n_components: int | None = None, weighting: str = "story",
                          settings: dict[str, Any] | None = None,
                          provenance: dict[str, Any] | None = None,
                          residual_norms: Any | None = None) -> EmotionVectors:
    """Assemble EmotionVectors from per-story pooled means and the neutral covariance ``[L, d, d]``.

    ``neutral_cov=None`` (or ``n_components=0``) skips the projection: the vectors are the centred means.
    """
    import torch

    raw, skipped = emotion_means(story_means, counts, labels, emotions, weighting)
    centred = raw - raw.mean(0, keepdim=True)
    pcs, vecs = [], torch.empty_like(centred)
    for j in range(len(layers)):
        if neutral_cov is None or n_components == 0:
            pc = torch.zeros((0, raw.shape[-1]))
        else:
            pc = neutral_components(neutral_cov[j], variance_fraction, n_components)
        pcs.append(pc)
        vecs[:, j] = project_out(centred[:, j], pc)
    st = dict(settings or {}, variance_fraction=variance_fraction, n_components=n_components, weighting=weighting,
              skipped_stories=skipped, n_stories=int((counts > 0).sum()))
    return EmotionVectors(list(emotions), list(layers), raw, vecs, pcs, st, dict(provenance or {}), raw.mean(0),
                          residual_norms)


def denoising_kept(vectors: EmotionVectors, layer: int) -> Any:
    """Per emotion, the share of the centred vector's norm that survives the neutral projection at ``layer``.
    For an orthogonal projection this equals cos(raw, denoised), so it is the one number to report."""
    raw = vectors.at(layer, denoised=False)
    return (vectors.at(layer).norm(dim=-1) / raw.norm(dim=-1).clamp(min=1e-12)).numpy()


def variance_curve(cov: Any, k: int = 100) -> Any:
    """Cumulative share of variance of the top ``k`` principal components of a covariance ``[d, d]``."""
    import torch

    evals = torch.linalg.eigvalsh(cov.double()).flip(0).clamp(min=0)
    return (evals.cumsum(0) / evals.sum())[:k].numpy()
