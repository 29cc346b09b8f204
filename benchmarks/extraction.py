"""Extraction benchmark: emolens vs a plain truncated HF forward vs the naive per-story run_with_cache.

Usage: python benchmarks/extraction.py [--model NAME] [--n 256] [--dtype float32|bfloat16] [--batch-size 8]

(a) emolens.extract.pooled_means over all layers (hooks on the TransformerLens bridge, pooled on the fly);
(b) the practical limit: the same HF model's decoder stack alone, truncated at the same layer, same dtype,
    same length-sorted batches, returning all hidden states (what any hook-free reader must at least do);
(c) the recipe most public reproductions use: one ``run_with_cache`` per story on the full model.
Prints tokens/s for each, the ratios a/b and a/c, and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def texts_for_benchmark(n: int) -> list[str]:
    """The corpus's stories when enough exist, else synthetic paragraphs of similar length."""
    from emolens.data import load_stories

    stories = [s.text for s in load_stories()]
    if len(stories) >= n:
        return stories[:n]
    words = "the morning light fell across the kitchen table where she sat reading the letter again".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(110 + (i % 60))) for i in range(n)]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run(model: str, n: int, dtype: str, batch_size: int, naive_n: int) -> dict[str, float]:
    from emolens.extract import Pooling, length_batches, pooled_means
    from emolens.models import load_model

    torch.set_grad_enabled(False)
    bridge, spec = load_model(model, dtype=dtype)
    texts = texts_for_benchmark(n)
    toks = [spec.encode(t) for t in texts]
    n_tok = sum(len(t) for t in toks)
    layers = list(range(spec.n_layers))

    pooled_means(bridge, spec, texts[:8], layers, Pooling(), batch_size=batch_size, progress=False)  # warm-up
    t0 = time.perf_counter()
    pooled_means(bridge, spec, texts, layers, Pooling(), batch_size=batch_size, progress=False)
    ta = time.perf_counter() - t0

    hf = bridge.original_model
    decoder = hf.model if hasattr(hf, "model") else hf.transformer
    t0 = time.perf_counter()
    for batch in length_batches([len(t) for t in toks], batch_size):
        T = max(len(toks[i]) for i in batch)
        ids = torch.zeros((len(batch), T), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(batch):
            ids[r, :len(toks[i])] = torch.tensor(toks[i])
            mask[r, :len(toks[i])] = 1
        decoder(input_ids=ids.to(spec.device), attention_mask=mask.to(spec.device), output_hidden_states=True)
    tb = time.perf_counter() - t0

    sub = texts[:naive_n]
    t0 = time.perf_counter()
    for t in sub:
        _, cache = bridge.run_with_cache(t)
        torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0, 50:].mean(0) for layer in layers])
        del cache
    tc = (time.perf_counter() - t0) * len(texts) / len(sub)

    out = {"tokens": n_tok, "a_tok_s": n_tok / ta, "b_tok_s": n_tok / tb, "c_tok_s": n_tok / tc,
           "a_over_b": tb / ta, "a_over_c": tc / ta, "peak_rss_gb": peak_rss_gb()}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--naive-n", type=int, default=32, help="stories timed for (c), extrapolated to --n")
    a = p.parse_args()
    r = run(a.model, a.n, a.dtype, a.batch_size, a.naive_n)
    print(f"model {a.model}, {a.dtype}, {a.n} texts, {r['tokens']} tokens, batch {a.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"(a) emolens pooled extraction, all layers : {r['a_tok_s']:8.0f} tokens/s")
    print(f"(b) plain HF forward, truncated, same data : {r['b_tok_s']:8.0f} tokens/s")
    print(f"(c) naive run_with_cache per story         : {r['c_tok_s']:8.0f} tokens/s")
    print(f"a/b = {r['a_over_b']:.2f}   a/c = {r['a_over_c']:.1f}   peak RSS = {r['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
