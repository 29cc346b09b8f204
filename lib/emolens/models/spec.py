"""ModelSpec: the facts about a loaded model that every experiment needs, and its chat formatting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# The paper's transcript format, used for models without a chat template (base models).
PLAIN_TURN = {"system": "{text}\n\n", "user": "Human: {text}\n\n", "assistant": "Assistant: {text}\n\n"}
PLAIN_ASSISTANT_HEADER = "Assistant:"


class ModelError(ValueError):
    """A model name, layer or option that is not allowed; the message lists what is."""


def default_probe_layer(n_layers: int) -> int:
    """About two-thirds of the depth, as in the paper (0-indexed block output)."""
    return max(0, round(2 * n_layers / 3) - 1)


@dataclass
class ModelSpec:
    name: str
    hf_name: str
    n_layers: int
    d_model: int
    probe_layer: int
    is_chat: bool
    dtype: str
    device: str
    weight_source: str
    weight_sha256: str | None
    quantization: str | None
    licence: str | None
    tokenizer: Any = field(repr=False, compare=False, default=None)

    # ---- layers ---------------------------------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        """A block index, 0-indexed; negative counts from the end (-1 is the last block), everywhere in emolens."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not -self.n_layers <= layer < self.n_layers:
            raise ModelError(f"layer {layer!r} is out of range for {self.name}: allowed 0..{self.n_layers - 1} "
                             f"(or negative indices from the end)")
        return layer % self.n_layers

    # ---- tokens ---------------------------------------------------------------------------------------
    @property
    def adds_bos(self) -> bool:
        """Whether the tokenizer itself puts a BOS token in front of plain text."""
        ids = self.tokenizer("a").input_ids
        return self.tokenizer.bos_token_id is not None and ids[:1] == [self.tokenizer.bos_token_id]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model sees it: the tokenizer's own special-token convention,
        without doubling a BOS that a chat template already wrote."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        if self.adds_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids
        return ids

    # ---- chat -----------------------------------------------------------------------------------------
    def format_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """A Human/Assistant exchange as text: the model's chat template, or the paper's
        "Human: ...\\n\\nAssistant: ..." format for models without one. Messages have 'role'
        ('system', 'user', 'assistant') and 'content'."""
        for m in messages:
            if m.get("role") not in PLAIN_TURN:
                raise ModelError(f"message role {m.get('role')!r} not allowed: use 'system', 'user' or 'assistant'")
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        text = "".join(PLAIN_TURN[m["role"]].format(text=m["content"]) for m in messages)
        if add_generation_prompt:
            return text + PLAIN_ASSISTANT_HEADER
        return text.rstrip("\n")

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format_user_prompt(self, user: str, system: str | None = None) -> str:
        """A single user message ready for the assistant's reply (ends at the Assistant colon)."""
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.format_chat(msgs, add_generation_prompt=True)

    def assistant_colon_position(self, messages: Sequence[dict[str, str]], turn: int = -1) -> tuple[list[int], int]:
        """Token ids of the formatted exchange and the index of its Assistant colon: the last token of
        the header of assistant turn ``turn`` (default the last; a trailing generation prompt counts as a
        turn), where the paper reads the model's state just before it answers."""
        msgs = list(messages)
        starts = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        ends_with_prompt = not msgs or msgs[-1]["role"] != "assistant"
        prefixes = [self.format_chat(msgs[:i], add_generation_prompt=True) for i in starts]
        if ends_with_prompt:
            prefixes.append(self.format_chat(msgs, add_generation_prompt=True))
        if not prefixes:
            raise ModelError("no assistant turn and no generation prompt: nothing has an Assistant colon")
        try:
            prefix = prefixes[turn]
        except IndexError:
            raise ModelError(f"turn {turn} out of range: the exchange has {len(prefixes)} assistant header(s)") from None
        full = self.format_chat(msgs, add_generation_prompt=ends_with_prompt)
        ids, pre = self.encode(full), self.encode(prefix)
        if ids[: len(pre)] != pre:
            raise ModelError(f"{self.name}: the tokenization of the header does not prefix the full text; "
                             "cannot place the Assistant colon")
        return ids, len(pre) - 1


class Model(NamedTuple):
    """A loaded model: the TransformerLens bridge and the facts emolens needs about it (:class:`ModelSpec`).

    It unpacks as ``bridge, spec = model``, so every function that takes ``(bridge, spec)`` takes ``*model``;
    TransformerLens users keep the bridge at ``model.bridge``.
    """

    bridge: "TransformerBridge"
    spec: ModelSpec
