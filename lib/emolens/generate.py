"""Text generation with the loaded model: plain completions and chat replies, greedy by default."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from emolens.models.spec import ModelSpec

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def complete(bridge: TransformerBridge, spec: ModelSpec, prompt: str, max_new_tokens: int = 40, greedy: bool = True,
             temperature: float = 0.8, seed: int = 0, fast: bool = True) -> str:
    """The model's continuation of ``prompt`` (already formatted), without the prompt itself.

    With ``fast`` (and when ``emolens.fastpath`` allows it) decoding uses the KV cache with the blocks' insides
    run as plain HF modules: block-level hooks (steering, ablation of the residual) still apply. Otherwise it
    runs without the KV cache, because TransformerLens 4.3's own cached decoding of Llama models emits
    degenerate text. Both give the same tokens (tested); the cached path is several times faster.
    """
    import torch

    from emolens.fastpath import maybe_hf_internals

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string")
    if not greedy:
        from emolens.interventions import finite_number

        finite_number("temperature", temperature, positive=True)
    ids = torch.tensor([spec.encode(prompt)], device=spec.device)
    torch.manual_seed(seed)
    with torch.inference_mode(), maybe_hf_internals(bridge, fast) as use_cache, warnings.catch_warnings():
        # the bridge passes HF the cache under its old keyword name
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        out = bridge.generate(ids, max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature,
                              verbose=False, return_type="tokens", use_past_kv_cache=use_cache)
    return spec.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def reply(bridge: TransformerBridge, spec: ModelSpec, user: str, system: str | None = None, **kw: Any) -> str:
    """The assistant's reply to one user message, formatted with the model's chat template."""
    return complete(bridge, spec, spec.format_user_prompt(user, system), **kw).strip()
