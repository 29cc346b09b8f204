"""Text generation with the loaded model: plain completions and chat replies, greedy by default."""

from __future__ import annotations

import warnings
from typing import Any

from emolens.models.spec import ModelSpec


def complete(bridge: Any, spec: ModelSpec, prompt: str, max_new_tokens: int = 40, greedy: bool = True,
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


def reply(bridge: Any, spec: ModelSpec, user: str, system: str | None = None, **kw: Any) -> str:
    """The assistant's reply to one user message, formatted with the model's chat template."""
    return complete(bridge, spec, spec.format_user_prompt(user, system), **kw).strip()


# ---- growing the corpus with a local chat model ---------------------------------------------------------

STORY_PROMPT = """Write {n} short stories, each one paragraph of {min_words} to {max_words} words, about this \
situation: {topic}

In every story one character feels {emotion}. Show the feeling only through what the character does, what \
their body feels, what they say and how they say it, what they think, and the situation around them. \
NEVER write the word "{emotion}", any form of it, or any word that means the same thing. A reader should \
still be able to tell what the character feels.

Each story starts fresh, with new names and a new opening. Mix first-person and third-person narration. \
Avoid stock phrases. Start each story on its own line with [story 1], [story 2], and so on."""


def story_prompt(emotion: str, topic: str, n: int = 2, min_words: int = 90, max_words: int = 170) -> str:
    """Our wording of the paper's story-generation protocol (section 2.1 of the paper notes)."""
    return STORY_PROMPT.format(n=n, topic=topic, emotion=emotion, min_words=min_words, max_words=max_words)


def parse_stories(text: str) -> list[str]:
    """Split a '[story 1] ... [story 2] ...' completion into stories (markers and blank pieces dropped)."""
    import re

    parts = re.split(r"\[\s*story\s*\d+\s*\]", text, flags=re.IGNORECASE)
    return [" ".join(p.split()) for p in parts[1:] if p.strip()] if len(parts) > 1 else (
        [" ".join(text.split())] if text.strip() else [])


def generate_stories(bridge: Any, spec: ModelSpec, emotion: str, topic: str, banned: Any, n: int = 2,
                     max_new_tokens: int = 400, min_words: int = 40, seed: int = 0,
                     greedy: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """Ask the model for ``n`` stories and keep those that pass the leak and length filters.

    ``banned`` is a :class:`emolens.data.BannedWords`. Returns ``(kept, rejected)``, each rejected entry with
    its text and the reason, so a notebook can show what the filter removed.
    """
    raw = complete(bridge, spec, spec.format_user_prompt(story_prompt(emotion, topic, n)),
                   max_new_tokens=max_new_tokens, greedy=greedy, seed=seed)
    kept, rejected = [], []
    for story in parse_stories(raw):
        leaks = banned.leaks(emotion, story)
        n_words = len(story.split())
        if leaks:
            rejected.append({"text": story, "reason": f"names the emotion: {sorted(set(leaks))}"})
        elif n_words < min_words:
            rejected.append({"text": story, "reason": f"too short ({n_words} words)"})
        else:
            kept.append(story)
    return kept, rejected
