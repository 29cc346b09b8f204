"""Text generation with the loaded model: plain completions and chat replies, greedy by default."""

from __future__ import annotations

from typing import Any

from emolens.models.spec import ModelSpec


def complete(bridge: Any, spec: ModelSpec, prompt: str, max_new_tokens: int = 40, greedy: bool = True,
             temperature: float = 0.8, seed: int = 0) -> str:
    """The model's continuation of ``prompt`` (already formatted), without the prompt itself.

    Generation runs without the KV cache: with TransformerLens 4.3 the bridge's cached decoding of Llama
    models emits degenerate text (the plain HF model does not), while the uncached path matches HF exactly.
    """
    import torch

    ids = torch.tensor([spec.encode(prompt)], device=spec.device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = bridge.generate(ids, max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature,
                              verbose=False, return_type="tokens", use_past_kv_cache=False)
    return spec.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def reply(bridge: Any, spec: ModelSpec, user: str, system: str | None = None, **kw: Any) -> str:
    """The assistant's reply to one user message, formatted with the model's chat template."""
    return complete(bridge, spec, spec.format_user_prompt(user, system), **kw).strip()
