"""Growing the corpus with a local chat model: our wording of the paper's story prompt, parsing and filtering.

Used by notebook 01 to show what a small model writes when asked; the shipped corpus was written by our writers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

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
    parts = re.split(r"\[\s*story\s*\d+\s*\]", text, flags=re.IGNORECASE)
    return [" ".join(p.split()) for p in parts[1:] if p.strip()] if len(parts) > 1 else (
        [" ".join(text.split())] if text.strip() else [])


def generate_stories(bridge: TransformerBridge, spec: Any, emotion: str, topic: str, banned: Any, n: int = 2,
                     max_new_tokens: int = 400, min_words: int = 40, seed: int = 0,
                     greedy: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """Ask the model for ``n`` stories and keep those that pass the leak and length filters.

    ``banned`` is a :class:`emolens.data.BannedWords`. Returns ``(kept, rejected)``, each rejected entry with
    its text and the reason, so a notebook can show what the filter removed.
    """
    from emolens.generate import complete

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
