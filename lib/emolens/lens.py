"""Logit lens (paper Table 1): which tokens an emotion vector promotes and suppresses through the unembedding."""

from __future__ import annotations

from typing import Any


def unembedding(bridge: Any) -> tuple[Any, Any | None]:
    """``(W_U [d, vocab], final-norm weight [d] or None)`` of a bridged model."""
    hf = bridge.original_model
    W = hf.get_output_embeddings().weight.detach().float().T  # [d, vocab]
    norm = getattr(getattr(hf, "model", hf), "norm", None)
    w = getattr(norm, "weight", None)
    if w is not None:
        w = w.detach().float()
        # Gemma's RMSNorm scales by (1 + weight); Llama's by weight
        if type(norm).__name__.startswith("Gemma"):
            w = 1 + w
    return W, w


def logit_lens(bridge: Any, spec: Any, vector: Any, k: int = 5, final_norm: bool = True) -> dict[str, list[str]]:
    """Top-``k`` and bottom-``k`` tokens of ``vector @ W_U``; with ``final_norm`` the final norm's per-dimension
    scale is applied first (for a single direction RMS normalisation itself only rescales)."""
    W, w = unembedding(bridge)
    v = vector.float()
    if final_norm and w is not None:
        v = v * w
    logits = v @ W
    top = logits.topk(k).indices.tolist()
    bottom = (-logits).topk(k).indices.tolist()
    dec = spec.tokenizer.convert_ids_to_tokens
    clean = lambda ts: [t.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n") for t in ts]  # noqa: E731
    return {"up": clean(dec(top)), "down": clean(dec(bottom))}
