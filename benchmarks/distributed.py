"""Data-parallel extraction benchmark: 2 ranks x 1 thread vs 1 rank x 2 threads, bf16 vs a plain HF forward,
the accumulation dtype's effect, and a projection to the paper's corpus.

Usage: python benchmarks/distributed.py [--model smollm2-135m-instruct] [--corpus v2] [--n 400]
                                        [--neutral-limit 100] [--rounds 1] [--json PATH]
                                        [--gpu-tflops 989] [--gpu-utilisation 0.4] > results/distributed.txt
The report goes to stdout, progress to stderr.

(1) ``python -m emolens.extract_corpus`` on ``--n`` stories evenly spaced through the corpus and
    ``--neutral-limit`` neutral dialogues, all layers, bfloat16 (the large-extraction dtype), each run in a
    fresh cache: once under ``torchrun --nproc-per-node 2`` with 1 thread per rank, once as 1 process with
    2 threads. Both results are compared (they must agree); the times show the scaling shape on this machine,
    not a promise of speed-up (2 cores shared with other work).
(2) The same stories in bfloat16, one process: emolens extraction (all layers, pooled on the fly, fast path) vs
    a plain Hugging Face forward of the decoder over the same length-sorted batches, interleaved batch by batch
    (helpers from benchmarks/extraction.py), fastest of ``--rounds``.
(3) Neutral statistics of the bfloat16 model accumulated in float32 vs float64: covariance error and the cosine
    of the denoised vectors built with each (the dtype policy), plus the fp32/bf16 agreement measured by
    benchmarks/bf16_agreement.py (read from its result file).
(4) PROJECTIONS, not measurements: the paper's 205,200 stories at the measured CPU rates; and on GPUs from an
    assumed peak (``--gpu-tflops``, a spec-sheet number) times an assumed utilisation, for the measured model
    and for 8B / 70B configurations. No GPU was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction import _cpu_name, padded, plain_causal_lm, timed  # noqa: E402  (the extraction benchmark's helpers)

PAPER_STORIES = 205_200  # the paper's story corpus, as stated in issue 16
REPO = Path(__file__).resolve().parents[1]

# Published architecture configurations (config.json of each model), from which parameters and memory are computed.
ARCHITECTURES = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(d_model=4096, n_layers=32, d_ff=14336, n_heads=32, n_kv_heads=8,
                                             vocab=128256, tied=False),
    "meta-llama/Llama-3.3-70B-Instruct": dict(d_model=8192, n_layers=80, d_ff=28672, n_heads=64, n_kv_heads=8,
                                              vocab=128256, tied=False),
}


def llama_parameters(d_model: int, n_layers: int, d_ff: int, n_heads: int, n_kv_heads: int, vocab: int,
                     tied: bool) -> int:
    """Parameter count of a Llama-style decoder: attention (q, o full; k, v grouped), gated MLP, two norms per
    block, embedding, final norm, and an untied unembedding."""
    head = d_model // n_heads
    attn = 2 * d_model * d_model + 2 * d_model * n_kv_heads * head
    block = attn + 3 * d_model * d_ff + 2 * d_model
    return n_layers * block + vocab * d_model * (1 if tied else 2) + d_model


def fresh_cache(root: Path) -> Path:
    """An empty extraction cache that shares the converted model weights (no copy, no rebuild)."""
    from emolens.paths import cache_dir

    root.mkdir(parents=True, exist_ok=True)
    for sub in ("models", "gguf", "wheels"):
        src = cache_dir() / sub
        if src.exists() and not (root / sub).exists():
            (root / sub).symlink_to(src)
    return root


def extract_cli(args: argparse.Namespace, ranks: int, threads: int, cache: Path) -> dict[str, Any]:
    """One run of ``emolens.extract_corpus`` (under torchrun when ``ranks`` > 1); its JSON report plus wall time."""
    out = cache / "report.json"
    cli = ["-m", "emolens.extract_corpus", "--model", args.model, "--corpus", args.corpus, "--limit", str(args.n),
           "--neutral-limit", str(args.neutral_limit), "--layers", "all", "--dtype", "bfloat16",
           "--threads", str(threads), "--quiet", "--json", str(out)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    env = dict(os.environ, EMOLENS_CACHE=str(cache), OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *launcher, *cli], env=env, check=True, capture_output=True, text=True)
    report = json.loads(out.read_text())
    report["seconds_wall"] = time.perf_counter() - t0
    return report


def cached_result(cache: Path, kind: str) -> dict[str, Any]:
    from emolens.cache import load_tensors

    files = sorted((cache / kind).glob("*.safetensors"))
    if len(files) != 1:
        raise RuntimeError(f"expected one {kind} result in {cache}, found {len(files)}")
    return load_tensors(files[0])[0]


def compare_runs(a: dict[str, Any], b: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """How far two runs' stored results are apart: story means and neutral covariance (relative Frobenius
    difference, worst layer) and the denoised vectors built from each (cosine, every emotion and layer)."""
    from emolens.vectors import build_emotion_vectors

    ok = a["activations"]["counts"] > 0

    def rel(x: Any, y: Any) -> float:  # [n?, L, ...] -> worst layer
        x, y = x.transpose(0, 1).flatten(1).double(), y.transpose(0, 1).flatten(1).double()
        return float(((x - y).norm(dim=1) / y.norm(dim=1)).max())

    emotions = list(dict.fromkeys(labels))
    layers = list(range(a["activations"]["means"].shape[1]))
    vec = [build_emotion_vectors(r["activations"]["means"], r["activations"]["counts"], labels, emotions, layers,
                                 r["neutral"]["cov"]).vectors for r in (a, b)]
    cos = torch.nn.functional.cosine_similarity(vec[0], vec[1], dim=-1)
    return {"counts_equal": bool(torch.equal(a["activations"]["counts"], b["activations"]["counts"])),
            "means_rel_diff_worst_layer": rel(a["activations"]["means"][ok], b["activations"]["means"][ok]),
            "cov_rel_diff_worst_layer": rel(a["neutral"]["cov"][None], b["neutral"]["cov"][None]),
            "vectors_cosine_min": float(cos.min()), "vectors_cosine_median": float(cos.median())}


def stories_sample(spec: Any, corpus: str, n: int) -> tuple[list[str], list[str], float]:
    """The benchmark's stories (as the CLI samples them), their labels, and the corpus's mean tokens per story."""
    from emolens.extract_corpus import evenly_spaced
    from emolens.vectors.recipe import corpus_inputs

    stories, _ = corpus_inputs(spec, corpus=corpus)
    mean_tokens = sum(len(spec.encode(s.text)) for s in stories) / len(stories)
    sample = evenly_spaced(stories, n)
    return [s.text for s in sample], [s.emotion for s in sample], mean_tokens


def emolens_vs_hf(args: argparse.Namespace, bridge: Any, spec: Any, texts: list[str]) -> dict[str, Any]:
    """(2): bf16 emolens extraction vs a plain HF decoder forward, same batches, interleaved."""
    from emolens.activations import Pooling, length_batches, pooled_means

    hf = plain_causal_lm(args.model, "bfloat16")
    decoder = hf.model if hasattr(hf, "model") else hf.transformer
    toks = [spec.encode(t) for t in texts]
    batches = length_batches([len(t) for t in toks], args.batch_size)
    inputs = [padded(toks, b) for b in batches]

    def a(j: int) -> None:
        pooled_means(bridge, spec, [texts[i] for i in batches[j]], None, Pooling(), batch_size=args.batch_size,
                     progress=False)

    def b(j: int) -> None:
        ids, mask = inputs[j]
        with torch.inference_mode():
            decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)

    a(len(batches) - 1), b(len(batches) - 1)  # warm-up on the shortest batch
    best = {"emolens": [float("inf")] * len(batches), "plain_hf": [float("inf")] * len(batches)}
    for r in range(args.rounds):
        for j in range(len(batches)):
            order = [("emolens", a), ("plain_hf", b)][:: 1 if (j + r) % 2 == 0 else -1]  # alternate who goes first
            for name, fn in order:
                best[name][j] = min(best[name][j], timed(lambda fn=fn, j=j: fn(j)))
    n_tok = sum(len(t) for t in toks)
    rate = {k: n_tok / sum(v) for k, v in best.items()}
    return {"tokens": n_tok, "tok_s": rate, "emolens_over_plain_time": sum(best["emolens"]) / sum(best["plain_hf"]),
            "threads": torch.get_num_threads()}


def accumulation_agreement(bridge: Any, spec: Any, neutral: list[str], means: Any, counts: Any,
                           labels: list[str]) -> dict[str, Any]:
    """(3): float32 vs float64 accumulation of the bf16 model's neutral statistics."""
    from emolens.activations import neutral_statistics
    from emolens.vectors import build_emotion_vectors

    st = {acc: neutral_statistics(bridge, spec, neutral, None, progress=False, accumulate=acc)
          for acc in ("float64", "float32")}
    t = {}
    for acc in st:
        t0 = time.perf_counter()
        neutral_statistics(bridge, spec, neutral[:20], None, progress=False, accumulate=acc)
        t[acc] = time.perf_counter() - t0
    c64, c32 = st["float64"]["cov"], st["float32"]["cov"]
    rel = ((c32 - c64).flatten(1).norm(dim=1) / c64.flatten(1).norm(dim=1)).max()
    emotions = list(dict.fromkeys(labels))
    layers = list(range(spec.n_layers))
    vec = {acc: build_emotion_vectors(means, counts, labels, emotions, layers, st[acc]["cov"]).vectors for acc in st}
    cos = torch.nn.functional.cosine_similarity(vec["float32"], vec["float64"], dim=-1)  # [E, L]
    return {"cov_max_rel_frobenius_diff": float(rel), "denoised_cosine_min": float(cos.min()),
            "denoised_cosine_median": float(cos.median()), "emotions": len(emotions),
            "seconds_20_neutral_texts": t}


def bf16_agreement_file() -> list[str]:
    path = REPO / "benchmarks" / "results" / "bf16_agreement.txt"
    return path.read_text().strip().splitlines() if path.exists() else [f"({path} not found: run make benchmark)"]


def projections(args: argparse.Namespace, rates: dict[str, float], mean_tokens: float, n_params: int,
                model_layers: int) -> dict[str, Any]:
    """(4): times for the paper's corpus. CPU: from the measured rates. GPU: an assumed model, stated."""
    tokens = PAPER_STORIES * mean_tokens
    cpu = {k: tokens / r / 3600 for k, r in rates.items()}
    flops_per_s = args.gpu_tflops * 1e12 * args.gpu_utilisation

    def gpu_hours(params: int, gpus: int) -> float:
        # forward only, ~2 FLOPs per parameter per token; extraction stops after the last layer read
        return tokens * 2 * params / (flops_per_s * gpus) / 3600

    models = {args.model: {"parameters": n_params, "layers": model_layers}}
    for name, arch in ARCHITECTURES.items():
        models[name] = {"parameters": llama_parameters(**arch), "layers": arch["n_layers"], "d_model": arch["d_model"]}
    gpu = {}
    for name, m in models.items():
        weights_gb = m["parameters"] * 2 / 1e9  # bfloat16
        row = {"parameters_billion": m["parameters"] / 1e9, "weights_bf16_gb": weights_gb,
               "hours_1_gpu": gpu_hours(m["parameters"], 1), "hours_8_gpus": gpu_hours(m["parameters"], 8)}
        if "d_model" in m:
            d, L = m["d_model"], m["layers"]
            row["neutral_accumulators_float32_gb_all_layers"] = L * d * d * 4 / 1e9
            row["story_means_float32_gb_all_layers"] = PAPER_STORIES * L * d * 4 / 1e9
        gpu[name] = row
    return {"paper_stories": PAPER_STORIES, "mean_tokens_per_story": mean_tokens, "paper_tokens": tokens,
            "cpu_hours_at_measured_rates": cpu,
            "gpu_assumptions": {"peak_tflops_bf16": args.gpu_tflops, "utilisation": args.gpu_utilisation,
                                "flops_per_token": "2 x parameters (forward only)", "measured": False},
            "gpu": gpu}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--corpus", default="v2")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--neutral-limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--gpu-tflops", type=float, default=989.0,
                   help="ASSUMED dense bf16 peak of one GPU (H100 SXM spec sheet: 989); not measured")
    p.add_argument("--gpu-utilisation", type=float, default=0.4, help="ASSUMED fraction of that peak reached")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "distributed.json"))
    args = p.parse_args()
    torch.set_grad_enabled(False)
    load0 = os.getloadavg()[0]  # other processes on this machine: the times depend on them

    with tempfile.TemporaryDirectory(prefix="emolens-bench-") as tmp:
        runs, caches = {}, {}
        for ranks, threads in ((2, 1), (1, 2)):
            name = f"{ranks}x{threads}"
            caches[name] = fresh_cache(Path(tmp) / name)
            runs[name] = extract_cli(args, ranks, threads, caches[name])
            print(f"(1) {name}: {runs[name]['story_tokens']} story tokens in {runs[name]['seconds_stories']:.1f} s, "
                  f"{runs[name]['neutral_tokens']} neutral tokens in {runs[name]['seconds_neutral']:.1f} s",
                  file=sys.stderr, flush=True)
        stored = {k: {kind: cached_result(c, kind) for kind in ("activations", "neutral")} for k, c in caches.items()}
        story = stored["2x1"]["activations"]

    from emolens.models import load_model
    from emolens.vectors.recipe import corpus_inputs

    os.environ.setdefault("EMOLENS_THREADS", "1")
    bridge, spec = load_model(args.model, dtype="bfloat16", verify=False)
    texts, labels, mean_tokens = stories_sample(spec, args.corpus, args.n)
    agree = compare_runs(stored["2x1"], stored["1x2"], labels)
    hf = emolens_vs_hf(args, bridge, spec, texts)
    print(f"(2) bf16 emolens {hf['tok_s']['emolens']:.0f} tok/s vs plain HF {hf['tok_s']['plain_hf']:.0f} tok/s",
          file=sys.stderr, flush=True)
    _, neutral = corpus_inputs(spec, corpus=args.corpus, neutral_limit=args.neutral_limit)
    acc = accumulation_agreement(bridge, spec, neutral, story["means"], story["counts"], labels)
    n_params = sum(p.numel() for p in bridge.original_model.parameters())
    rates = {k: (r["story_tokens"] + r["neutral_tokens"]) / (r["seconds_stories"] + r["seconds_neutral"])
             for k, r in runs.items()}
    rates["bf16_1_process_emolens_loop"] = hf["tok_s"]["emolens"]
    proj = projections(args, rates, mean_tokens, n_params, spec.n_layers)
    result = {"model": args.model, "corpus": args.corpus, "stories": args.n, "neutral_texts": args.neutral_limit,
              "machine": f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} cores, shared with other work",
              "date": time.strftime("%Y-%m-%d"), "load_average_1min": {"start": load0, "end": os.getloadavg()[0]},
              "runs": runs, "tok_s": rates, "ranks_agree": agree,
              "emolens_vs_plain_hf_bf16": hf, "accumulation": acc, "bf16_agreement_file": bf16_agreement_file(),
              "projection": proj}
    Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True))
    print(report(result))


def report(r: dict[str, Any]) -> str:
    runs, agree, hf, acc, proj = r["runs"], r["ranks_agree"], r["emolens_vs_plain_hf_bf16"], r["accumulation"], \
        r["projection"]
    lines = [f"model {r['model']}, bfloat16, corpus {r['corpus']}: {r['stories']} stories evenly spaced + "
             f"{r['neutral_texts']} neutral dialogues, all layers; {r['machine']}; {r['date']}",
             f"load average (1 min) {r['load_average_1min']['start']:.1f} at start, "
             f"{r['load_average_1min']['end']:.1f} at end",
             "(1) python -m emolens.extract_corpus, fresh cache each (measured):"]
    for name, x in runs.items():
        lines.append(f"    {name[0]} rank(s) x {name[2]} thread(s): stories {x['seconds_stories']:.1f} s "
                     f"({x['story_tokens'] / x['seconds_stories']:.0f} tok/s), neutral {x['seconds_neutral']:.1f} s "
                     f"({x['neutral_tokens'] / x['seconds_neutral']:.0f} tok/s), wall incl. start-up "
                     f"{x['seconds_wall']:.1f} s")
    lines.append(f"    the two runs agree: counts equal {agree['counts_equal']}; relative difference (worst layer) of "
                 f"story means {agree['means_rel_diff_worst_layer']:.1e}, of neutral cov "
                 f"{agree['cov_rel_diff_worst_layer']:.1e}; denoised vectors cosine min "
                 f"{agree['vectors_cosine_min']:.5f}, median {agree['vectors_cosine_median']:.5f} (bf16 rounding "
                 "differs with batch composition and thread count; float32 runs agree to 1e-5: "
                 "tests/test_distributed.py)")
    lines.append(f"(2) bf16, one process, {hf['threads']} thread(s), same {hf['tokens']} tokens (measured): emolens "
                 f"{hf['tok_s']['emolens']:.0f} tok/s, plain HF forward {hf['tok_s']['plain_hf']:.0f} tok/s; "
                 f"emolens time / HF time = {hf['emolens_over_plain_time']:.2f}")
    lines.append(f"(3) neutral statistics of the bf16 model, float32 vs float64 accumulation (measured): max rel. "
                 f"Frobenius diff of cov {acc['cov_max_rel_frobenius_diff']:.1e}; denoised vectors cosine min "
                 f"{acc['denoised_cosine_min']:.6f}, median {acc['denoised_cosine_median']:.6f} "
                 f"({acc['emotions']} emotions x all layers); time on 20 texts: "
                 + ", ".join(f"{k} {v:.1f} s" for k, v in acc["seconds_20_neutral_texts"].items()))
    lines.append("    fp32 vs bf16 model (benchmarks/bf16_agreement.py, from its result file):")
    lines += [f"      {x}" for x in r["bf16_agreement_file"]]
    g = proj["gpu_assumptions"]
    lines.append(f"(4) PROJECTION (not measured) for the paper's {proj['paper_stories']:,} stories x "
                 f"{proj['mean_tokens_per_story']:.0f} tokens (this corpus's mean, {r['model']}'s tokenizer) = "
                 f"{proj['paper_tokens'] / 1e6:.1f} M tokens:")
    for k, h in proj["cpu_hours_at_measured_rates"].items():
        lines.append(f"    this CPU at the rate measured for {k}: {h:.1f} hours")
    lines.append(f"    GPUs, ASSUMING {g['peak_tflops_bf16']:.0f} TFLOP/s bf16 peak at {g['utilisation']:.0%} "
                 f"utilisation and 2 FLOPs per parameter per token (no GPU measured):")
    for name, m in proj["gpu"].items():
        extra = ""
        if "neutral_accumulators_float32_gb_all_layers" in m:
            acc_gb, means_gb = m["neutral_accumulators_float32_gb_all_layers"], m["story_means_float32_gb_all_layers"]
            extra = (f"; neutral accumulators (float32, all layers) {acc_gb:.1f} GB, story means (float32, all layers, "
                     f"rank 0's host) {means_gb:.0f} GB")
        lines.append(f"    {name}: {m['parameters_billion']:.2f} B parameters, bf16 weights {m['weights_bf16_gb']:.1f} "
                     f"GB; {m['hours_1_gpu']:.2f} h on 1 GPU, {m['hours_8_gpus']:.2f} h on 8{extra}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
