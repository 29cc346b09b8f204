"""Extraction benchmark: emolens vs a plain Hugging Face forward vs the naive per-story run_with_cache.

Usage: python benchmarks/extraction.py [--model NAME] [--n 256] [--dtype float32|bfloat16] [--batch-size 8]
                                       [--rounds 3] [--naive-n 32] [--json PATH]

(a)  emolens.activations.pooled_means over all layers: TransformerLens hooks on the bridge, pooled on the fly,
     block insides run as plain HF modules (emolens.fastpath, the default);
(a0) the same with fast=False: every bridge wrapper and the bridge's step-by-step attention;
(b)  the practical limit: a separately loaded, plain HF model of the same weights (its default attention,
     SDPA), decoder stack only, same dtype, same length-sorted batches, returning all hidden states;
(c)  the recipe most public reproductions use: one ``run_with_cache`` per story on the full bridge.

Timing: shared 2-core machines drift by +-20% within a minute, so the methods are interleaved batch by batch
(order rotated every round) and each batch's time is its fastest of ``--rounds`` rounds; ratios compare those
sums. The median-of-rounds totals are printed too. Peak memory of (a) alone is measured in a child process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

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
    """Peak resident memory of this process image. /proc's VmHWM restarts at exec; ru_maxrss does not (a
    child started by fork+exec inherits the parent's peak), so it is only the fallback."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def plain_causal_lm(model: str, dtype: str) -> Any:
    """A fresh HF causal LM from the same cached weights, untouched by the bridge (which rewires its own copy)."""
    from transformers import AutoModelForCausalLM

    from emolens.models.embedded import EMBEDDED, ensure_converted

    source = str(ensure_converted(model, verify=False)[0]) if model in EMBEDDED else model
    return AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)).eval()


def plain_hf(model: str, dtype: str) -> Any:
    """The decoder of :func:`plain_causal_lm` (no final norm beyond its own, no unembedding)."""
    hf = plain_causal_lm(model, dtype)
    return hf.model if hasattr(hf, "model") else hf.transformer


def padded(toks: list[list[int]], batch: list[int]) -> tuple[Any, Any]:
    T = max(len(toks[i]) for i in batch)
    ids = torch.zeros((len(batch), T), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, i in enumerate(batch):
        ids[r, :len(toks[i])] = torch.tensor(toks[i])
        mask[r, :len(toks[i])] = 1
    return ids, mask


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(model: str, n: int, dtype: str, batch_size: int, naive_n: int, rounds: int) -> dict[str, Any]:
    from emolens.activations import Pooling, length_batches, pooled_means
    from emolens.models import load_model

    torch.set_grad_enabled(False)
    bridge, spec = load_model(model, dtype=dtype, verify=False)
    decoder = plain_hf(model, dtype)
    texts = texts_for_benchmark(n)
    toks = [spec.encode(t) for t in texts]
    n_tok = sum(len(t) for t in toks)
    layers = list(range(spec.n_layers))
    batches = length_batches([len(t) for t in toks], batch_size)
    inputs = [padded(toks, b) for b in batches]

    def a(j: int, fast: bool) -> None:
        pooled_means(bridge, spec, [texts[i] for i in batches[j]], layers, Pooling(), batch_size=batch_size,
                     progress=False, fast=fast)

    def b(j: int) -> None:
        ids, mask = inputs[j]
        with torch.inference_mode():
            decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    def c(text: str) -> None:
        _, cache = bridge.run_with_cache(text)
        torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0, 50:].mean(0) for layer in layers])

    methods: dict[str, Callable[[int], None]] = {"a": lambda j: a(j, True), "a0": lambda j: a(j, False), "b": b}
    a(0, True), a(0, False), b(0), c(texts[0])  # warm-up
    per_batch = {k: [[0.0] * rounds for _ in batches] for k in methods}
    naive = []
    for r in range(rounds):
        order = list(methods)[r % len(methods):] + list(methods)[:r % len(methods)]
        for j in range(len(batches)):
            for k in order:
                per_batch[k][j][r] = timed(lambda k=k, j=j: methods[k](j))
        naive.append(timed(lambda: [c(t) for t in texts[:naive_n]]) * len(texts) / naive_n)
    best = {k: sum(min(rs) for rs in v) for k, v in per_batch.items()}
    median = {k: statistics.median(sum(v[j][r] for j in range(len(batches))) for r in range(rounds))
              for k, v in per_batch.items()}
    best["c"], median["c"] = min(naive), statistics.median(naive)
    return {"model": model, "dtype": dtype, "texts": n, "tokens": n_tok, "batch_size": batch_size,
            "rounds": rounds, "naive_texts": naive_n, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {platform.processor() or ''} {_cpu_name()}".strip(),
            "tok_s": {k: n_tok / v for k, v in best.items()},
            "tok_s_median": {k: n_tok / v for k, v in median.items()},
            "a_over_b": best["b"] / best["a"], "a0_over_b": best["b"] / best["a0"], "a_over_c": best["c"] / best["a"],
            "a_over_b_median": median["b"] / median["a"], "a_over_c_median": median["c"] / median["a"]}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def memory_child(model: str, n: int, dtype: str, batch_size: int) -> float:
    """Peak RSS (GB) of a fresh process that loads the model and runs (a) alone on ``n`` texts."""
    code = ("import sys, resource, torch; sys.path.insert(0, 'benchmarks'); from extraction import *; "
            "from emolens.activations import Pooling, pooled_means; from emolens.models import load_model; "
            "torch.set_grad_enabled(False); "
            f"b, s = load_model({model!r}, dtype={dtype!r}, verify=False); "
            f"pooled_means(b, s, texts_for_benchmark({n}), None, Pooling(), batch_size={batch_size}, progress=False); "
            "print(peak_rss_gb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--naive-n", type=int, default=32, help="stories timed for (c) per round, extrapolated to --n")
    p.add_argument("--memory-n", type=int, default=None, help="texts for the memory child (default --n)")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    r = run(a.model, a.n, a.dtype, a.batch_size, a.naive_n, a.rounds)
    r["peak_rss_gb_a"] = memory_child(a.model, a.memory_n or a.n, a.dtype, a.batch_size)
    r["memory_texts"] = a.memory_n or a.n
    t, tm = r["tok_s"], r["tok_s_median"]
    print(f"model {a.model}, {a.dtype}, {a.n} texts, {r['tokens']} tokens, batch {a.batch_size}, "
          f"{r['threads']} threads, {r['machine']}; fastest of {a.rounds} interleaved rounds (median in brackets)")
    print(f"(a)  emolens, all layers, fast path      : {t['a']:7.0f} tokens/s  [{tm['a']:6.0f}]")
    print(f"(a0) emolens, all layers, bridge path    : {t['a0']:7.0f} tokens/s  [{tm['a0']:6.0f}]")
    print(f"(b)  plain HF forward (SDPA), same data  : {t['b']:7.0f} tokens/s  [{tm['b']:6.0f}]")
    print(f"(c)  naive run_with_cache per story      : {t['c']:7.0f} tokens/s  [{tm['c']:6.0f}]")
    print(f"a/b = {r['a_over_b']:.2f} [{r['a_over_b_median']:.2f}]   a0/b = {r['a0_over_b']:.2f}   "
          f"a/c = {r['a_over_c']:.2f} [{r['a_over_c_median']:.2f}]   "
          f"peak RSS of (a) on {r['memory_texts']} texts = {r['peak_rss_gb_a']:.2f} GB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
