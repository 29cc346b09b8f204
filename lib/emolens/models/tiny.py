"""Random-init models from local configs, for unit tests: no network, a second or two to build.

The tokenizer is a byte-level BPE trained in memory on a few sentences, so every string encodes.
The Llama variant carries a ChatML-style chat template; the Gemma and GPT-2 variants have none and use
the paper's plain "Human:/Assistant:" format, so both formatting paths are exercised.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from typing import Any

from emolens.models.spec import Model, ModelSpec, default_probe_layer

ARCHS = ("llama", "gemma3", "gpt2")
_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps by the warm stove.",
    "She opened the letter, read it twice, and put it back in the drawer without a word.",
    "Human: What is two plus two?\n\nAssistant: Four.",
    "He took 1000 mg, then 8000 mg of the medicine; the numbers 0123456789 appear here.",
]


@lru_cache(maxsize=4)
def tiny_tokenizer(chat: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_TRAIN_TEXT * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  additional_special_tokens=specials[3:])
    if chat:
        tok.chat_template = _CHATML
    # TransformerLens rebuilds the tokenizer from its folder (to switch BOS on), so give it one.
    folder = tempfile.mkdtemp(prefix="emolens-tiny-tok-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # only needed while the bridge boots
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _hf_model(arch: str, vocab: int, n_layers: int, d_model: int) -> Any:
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = LlamaConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common)
        return LlamaForCausalLM(cfg)
    if arch == "gemma3":
        cfg = Gemma3TextConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                               max_position_embeddings=512, sliding_window=16, **common)
        m = Gemma3ForCausalLM(cfg)
        m.config.architectures = ["Gemma3ForCausalLM"]
        return m
    cfg = GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=512, **common)
    return GPT2LMHeadModel(cfg)


def tiny_model(arch: str = "llama", seed: int = 0, n_layers: int = 4, d_model: int = 64) -> tuple[Any, ModelSpec]:
    """A random-init ``(bridge, spec)`` of architecture ``arch`` (one of ``ARCHS``), deterministic in ``seed``."""
    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}: choose one of {ARCHS}")
    transformers.logging.set_verbosity_error()
    tok = tiny_tokenizer(chat=(arch == "llama"))
    torch.manual_seed(seed)
    hf = _hf_model(arch, len(tok), n_layers, d_model).eval()
    hf.config.architectures = hf.config.architectures or [type(hf).__name__]
    bridge = TransformerBridge.boot_transformers(f"emolens/tiny-{arch}", hf_model=hf, tokenizer=tok, device="cpu")
    bridge.eval()
    tok = bridge.tokenizer  # the bridge's copy, with its BOS convention
    spec = ModelSpec(name=f"tiny-{arch}", hf_name=f"emolens/tiny-{arch}", n_layers=n_layers, d_model=d_model,
                     probe_layer=default_probe_layer(n_layers), is_chat=arch == "llama", dtype="float32",
                     device="cpu", weight_source=f"random init, seed {seed}", weight_sha256=None,
                     quantization=None, licence=None, tokenizer=tok)
    return Model(bridge, spec)
