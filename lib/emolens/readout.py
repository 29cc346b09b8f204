"""Readouts: project texts, per token or pooled, onto emotion vectors (cosine or raw dot product).

These are raw projections of the residual stream, as the paper's per-token traces and Assistant-colon readouts
use them. To *classify* a new text by emotion use :meth:`emolens.vectors.EmotionVectors.score_texts`, which
centres and denoises the text's activation the way the vectors were made (a raw pooled projection is dominated
by the mean over emotions, and one emotion would win nearly every text).

Example::

    model = load_model()
    vectors = load_or_build(model)
    layer = model.spec.probe_layer
    toks, values = token_readout(*model, "I heard the ice crack under my boots.", vectors, layer)
    colon = colon_readout(*model, ["I just took 8000 mg of ibuprofen."], vectors, layer)   # [1, 171]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from emolens.activations import Pooling, forward_layers, pooled_means, special_ids, token_residuals
from emolens.models.spec import ModelSpec

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    from emolens.vectors import EmotionVectors

MEASURES = ("cosine", "dot")


def vector_matrix(vectors: EmotionVectors | torch.Tensor, spec: ModelSpec, layer: int) -> torch.Tensor:
    """The ``[E, d]`` matrix to read out with: an :class:`~emolens.vectors.EmotionVectors` (checked to come from
    ``spec``'s model, taken at ``layer``) or a plain ``[E, d]`` tensor of directions (checked for width and
    finite values)."""
    import torch

    from emolens.vectors import EmotionVectors

    if isinstance(vectors, EmotionVectors):
        vectors.check_model(spec)
        return vectors.at(layer)
    m = torch.as_tensor(vectors)
    if m.dim() != 2 or m.shape[-1] != spec.d_model:
        raise ValueError(f"readout vectors must be [n_emotions, {spec.d_model}] for {spec.name}, "
                         f"got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError("readout vectors contain NaN or inf")
    return m


def project(x: torch.Tensor, vectors: torch.Tensor, measure: str = "cosine") -> torch.Tensor:
    """``x [..., d]`` against ``vectors [E, d]`` -> ``[..., E]``; dot uses unit vectors, so it is in residual units."""
    import torch

    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r} not allowed: choose one of {MEASURES}")
    v = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    out = x.float() @ v.T.float()
    if measure == "cosine":
        out = out / x.float().norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return out if isinstance(out, torch.Tensor) else torch.as_tensor(out)


def token_readout(bridge: TransformerBridge, spec: ModelSpec, text: str, vectors: Any, layer: int,
                  measure: str = "cosine") -> tuple[list[str], Any]:
    """Per-token readout ``[T, E]`` of ``text`` at ``layer`` and the token strings."""
    m = vector_matrix(vectors, spec, layer)
    ids, res = token_residuals(bridge, spec, text, [layer])
    toks = [spec.tokenizer.decode([i]) for i in ids]
    return toks, project(res[:, 0], m, measure)


def pooled_readout(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], vectors: Any, layer: int,
                   start: int = 0, measure: str = "cosine", batch_size: int = 8) -> Any:
    """Readout ``[n, E]`` of each text's mean residual over its own tokens from ``start`` on.

    A text with no token at or after ``start`` has a row of NaN (and a warning names it), never a number.
    """
    m = vector_matrix(vectors, spec, layer)
    means, counts = pooled_means(bridge, spec, texts, [layer], Pooling(start=start), batch_size=batch_size,
                                 progress=False)
    out = project(means[:, 0], m, measure)
    out[counts == 0] = float("nan")
    return out


def position_activations(bridge: TransformerBridge, spec: ModelSpec, sequences: Sequence[Sequence[int]],
                         positions: Sequence[int], layers: Sequence[int], batch_size: int = 8) -> Any:
    """Residuals ``[n, L, d]`` of each token sequence at one position each (e.g. its Assistant colon)."""
    import torch

    from emolens.activations import length_batches

    out = torch.zeros((len(sequences), len(layers), spec.d_model))
    li = {layer: j for j, layer in enumerate(layers)}
    for batch in length_batches([len(s) for s in sequences], batch_size):
        def on_layer(layer: int, resid: Any, offsets: list[int], batch: list[int] = batch) -> None:
            for r, i in enumerate(batch):
                out[i, li[layer]] = resid[r, offsets[r] + positions[i]].float().cpu()

        forward_layers(bridge, spec, [sequences[i] for i in batch], sorted(layers), "resid_post", on_layer)
    return out


def colon_readout(bridge: TransformerBridge, spec: ModelSpec, user_messages: Sequence[str], vectors: Any, layer: int,
                  measure: str = "cosine", system: str | None = None) -> Any:
    """Readout ``[n, E]`` at the Assistant colon of each one-message exchange (paper Figures 2 and 3)."""
    m = vector_matrix(vectors, spec, layer)
    return project(colon_activations(bridge, spec, user_messages, layer, system), m, measure)


def colon_activations(bridge: TransformerBridge, spec: ModelSpec, user_messages: Sequence[str], layer: int,
                      system: str | None = None) -> Any:
    """Residuals ``[n, d]`` at the Assistant colon of each one-message exchange; project them onto several
    sets of vectors (real and random, say) without running the model again."""
    seqs, pos = [], []
    for m in user_messages:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": m}]
        ids, p = spec.assistant_colon_position(msgs)
        seqs.append(ids)
        pos.append(p)
    return position_activations(bridge, spec, seqs, pos, [layer])[:, 0]


# ---- logit lens (paper Table 1): which tokens a vector promotes and suppresses through the unembedding ----


def unembedding(bridge: TransformerBridge) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W_U [d, vocab], final-norm weight [d] or None)`` of a bridged model."""
    hf = bridge.original_model
    W = hf.get_output_embeddings().weight.detach().float().T  # [d, vocab]
    norm = getattr(getattr(hf, "model", hf), "norm", None)
    w = getattr(norm, "weight", None)
    if w is not None:
        w = w.detach().float()
        # Gemma's RMSNorm scales by (1 + weight); Llama's by weight. Ask the config, not the module's class:
        # inside a TransformerBridge the norm is a bridge component whose class name is not Gemma's.
        if str(getattr(hf.config, "model_type", "")).startswith("gemma"):
            w = 1 + w
    return W, w


def logit_lens(bridge: TransformerBridge, spec: ModelSpec, vector: torch.Tensor, k: int = 5, final_norm: bool = True) -> dict[str, list[str]]:
    """Top-``k`` and bottom-``k`` tokens of ``vector @ W_U``; with ``final_norm`` the final norm's per-dimension
    scale is applied first (for a single direction RMS normalisation itself only rescales)."""
    W, w = unembedding(bridge)
    v = vector.float()
    if final_norm and w is not None:
        v = v * w
    logits = v @ W
    top = logits.topk(k).indices.tolist()
    bottom = (-logits).topk(k).indices.tolist()
    # decoded text, not byte-level token strings (which show "âĢĻ" for an apostrophe)
    dec = spec.tokenizer.decode
    return {"up": [dec([i]) for i in top], "down": [dec([i]) for i in bottom], "up_ids": top, "down_ids": bottom}


__all__ = ["MEASURES", "colon_activations", "colon_readout", "pooled_readout", "position_activations", "project",
           "special_ids", "token_readout", "vector_matrix", "logit_lens", "unembedding"]
