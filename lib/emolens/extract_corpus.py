"""Extract the corpus's activations and vectors from the command line, in one process or many.

    python -m emolens.extract_corpus --model smollm2-135m-instruct --layers all --corpus v2
    torchrun --nproc-per-node 2 -m emolens.extract_corpus --model smollm2-135m-instruct --layers all
    torchrun --nproc-per-node 8 -m emolens.extract_corpus --model meta-llama/Llama-3.1-8B-Instruct --layers all
    torchrun --nproc-per-node 2 -m emolens.extract_corpus --model meta-llama/Llama-3.3-70B-Instruct \\
        --gpus-per-rank 4 --layers 39,53,59

It runs the same recipe as the notebooks (:func:`emolens.vectors.recipe.corpus_activations`) and writes the
same caches: per-story pooled means under ``activations/``, neutral statistics under ``neutral/``, and (for
the whole corpus, not a ``--limit`` or ``--stories-per-emotion`` subset) the vectors where
:func:`emolens.vectors.load_or_build` finds them. Under ``torchrun`` the stories and neutral texts are split
over the ranks (:mod:`emolens.distributed`); the result is the single-process one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from emolens.models.load import DTYPES

DTYPE_CHOICES = ("auto", *DTYPES)


def parse_layers(text: str, n_layers: int, probe_layer: int) -> list[int] | None:
    """``all`` (None: every block), ``probe`` (the model's probe layer), or ints and ranges: ``3,5,10-12``."""
    text = text.strip()
    if text == "all":
        return None
    if text == "probe":
        return [probe_layer]
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
        try:
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise ValueError(f"--layers {text!r}: {part!r} is not a layer; allowed: 'all', 'probe', or block "
                             f"indices 0..{n_layers - 1} and ranges such as '3,5,10-12'") from None
    if not out:
        raise ValueError(f"--layers {text!r} names no layer")
    return out


def evenly_spaced(items: list[Any], n: int) -> list[Any]:
    """``n`` items spread evenly through ``items`` (all of them when there are fewer): a sample with the
    corpus's mix of emotions, writers and lengths, unlike its first ``n``."""
    if n >= len(items):
        return list(items)
    return [items[(k * len(items)) // n] for k in range(n)]


def choose_dtype(dtype: str, model: str, cuda: bool) -> str:
    """The dtype policy. ``auto``: for the embedded models the notebooks' full-run dtype
    (:func:`emolens.defaults.model_dtype`: ``EMOLENS_DTYPE``, else bfloat16), so that both share caches; for hub
    models bfloat16 (half the memory of float32, 2-3x its speed here), float16 on GPUs without bfloat16.
    Sums and covariances accumulate in float32 or float64 whatever the model's dtype
    (:func:`emolens.activations.accumulation_dtype`)."""
    from emolens.defaults import model_dtype
    from emolens.models import EMBEDDED

    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"--dtype {dtype!r} not allowed: choose one of {DTYPE_CHOICES}")
    if dtype != "auto":
        return dtype
    if model in EMBEDDED:
        return model_dtype(fast=False)
    if cuda:
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16"


def rank_placement(args: argparse.Namespace, local_rank: int, local_world: int = 1) -> dict[str, Any]:
    """Where this rank's copy of the model lives: one GPU per rank, a group of ``--gpus-per-rank`` GPUs per rank
    (device_map over them), the ``--device-map`` given, or ``--device`` (default: the best present)."""
    import torch

    if args.gpus_per_rank:
        if not torch.cuda.is_available():
            raise ValueError("--gpus-per-rank needs CUDA GPUs, and this machine has none")
        k = args.gpus_per_rank
        first = local_rank * k
        if first + k > torch.cuda.device_count():
            raise ValueError(f"--gpus-per-rank {k} x {local_rank + 1} rank(s) on this node needs "
                             f"{first + k} GPUs; {torch.cuda.device_count()} present")
        free = {g: torch.cuda.mem_get_info(g)[0] for g in range(first, first + k)}
        return {"device_map": args.device_map or "balanced", "max_memory": free}
    if args.device_map:
        if local_world > 1:
            raise ValueError(f"--device-map with {local_world} ranks on this node would put every rank's copy on "
                             "all GPUs: give --gpus-per-rank K so that each rank splits its model over its own K GPUs")
        return {"device_map": args.device_map}
    if args.device is None and torch.cuda.is_available():
        return {"device": f"cuda:{local_rank}"}
    return {"device": args.device}


def set_threads(args: argparse.Namespace) -> None:
    """One torch thread pool per rank: the node's cores shared among its ranks unless told otherwise."""
    if args.threads is not None:
        os.environ["EMOLENS_THREADS"] = str(args.threads)
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > 1 and "EMOLENS_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["EMOLENS_THREADS"] = str(max(1, cores // local_world))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emolens.extract_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or Hugging Face id")
    p.add_argument("--layers", default="all", help="'all', 'probe', or indices and ranges: '3,5,10-12'")
    p.add_argument("--corpus", default=None, help="v1, v2 or v2-new (default: EMOLENS_CORPUS, else v2)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES)
    p.add_argument("--emotions", default="all", help="'all', 'exemplars' or comma-separated emotion words")
    p.add_argument("--stories-per-emotion", type=int, default=None)
    p.add_argument("--limit", type=int, default=None,
                   help="only N stories, evenly spaced through the corpus (trials, benchmarks)")
    p.add_argument("--neutral-limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=128, help="stories per checkpoint of each rank")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the rank's GPU, else cpu)")
    p.add_argument("--device-map", default=None, help="split one model over GPUs: auto, balanced, ...")
    p.add_argument("--gpus-per-rank", type=int, default=None, help="GPUs per rank, for models larger than one")
    p.add_argument("--backend", default=None, choices=("gloo", "nccl"), help="default: nccl with CUDA, else gloo")
    p.add_argument("--threads", type=int, default=None, help="torch threads per rank")
    p.add_argument("--refresh", action="store_true", help="recompute; discard checkpoints of another world size")
    p.add_argument("--out", default=None, help="also save the vectors (all layers extracted) to this file")
    p.add_argument("--json", default=None, help="write sizes and timings (rank 0) to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Extract on every rank; rank 0 writes the vectors and returns the report (other ranks return theirs)."""
    import torch

    from emolens.activations import Pooling, resolve_layers
    from emolens.defaults import corpus as default_corpus
    from emolens.distributed import close_ranks, init_ranks
    from emolens.models import load_model
    from emolens.vectors.recipe import corpus_inputs, neutral_covariance, story_activations

    for name in ("batch_size", "chunk_size", "limit", "stories_per_emotion", "neutral_limit", "gpus_per_rank",
                 "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    set_threads(args)
    ranks = init_ranks(args.backend)
    try:
        torch.set_grad_enabled(False)
        dtype = choose_dtype(args.dtype, args.model, torch.cuda.is_available())
        placement = rank_placement(args, ranks.local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        bridge, spec = load_model(args.model, dtype=dtype, **placement)
        layers = resolve_layers(spec, parse_layers(args.layers, spec.n_layers, spec.probe_layer))
        args.corpus = args.corpus or default_corpus()
        emotions: Any = args.emotions if args.emotions in ("all", "exemplars") else args.emotions.split(",")
        stories, neutral = corpus_inputs(spec, emotions, args.stories_per_emotion, args.neutral_limit, args.corpus)
        stories = evenly_spaced(stories, args.limit) if args.limit else stories
        texts = [s.text for s in stories]
        progress = ranks.is_main and not args.quiet
        t0 = time.perf_counter()
        story_activations(bridge, spec, texts, layers, Pooling(), batch_size=args.batch_size,
                          chunk_size=args.chunk_size, progress=progress, refresh=args.refresh, ranks=ranks)
        t1 = time.perf_counter()
        neutral_covariance(bridge, spec, neutral, layers, batch_size=args.batch_size, progress=progress,
                           refresh=args.refresh, ranks=ranks)
        t2 = time.perf_counter()
        report = {"model": args.model, "dtype": dtype, "corpus": args.corpus, "layers": layers,
                  "world_size": ranks.world_size, "backend": ranks.backend, "threads": torch.get_num_threads(),
                  "device": spec.device, "stories": len(texts), "neutral_texts": len(neutral),
                  "story_tokens": sum(len(spec.encode(t)) for t in texts),
                  "neutral_tokens": sum(len(spec.encode(t)) for t in neutral),
                  "seconds_stories": t1 - t0, "seconds_neutral": t2 - t1}
        if ranks.is_main:
            report["vectors"] = save_vectors(args, (bridge, spec), layers, emotions, whole=not args.limit)
        return report
    finally:
        close_ranks(ranks)


def save_vectors(args: argparse.Namespace, model: Any, layers: list[int], emotions: Any, whole: bool) -> list[str]:
    """Build the vectors from the caches just filled (rank 0 alone, no model pass) and save them: where
    ``load_or_build`` looks for the whole corpus, and to ``--out`` when given."""
    from emolens.activations import Pooling
    from emolens.cache import content_hash
    from emolens.defaults import VARIANCE_FRACTION
    from emolens.paths import cache_dir
    from emolens.vectors import vectors_from, vectors_key
    from emolens.vectors.recipe import corpus_activations

    bridge, spec = model
    # the caches were just filled by all ranks: this reads them (no model pass), so rank 0 needs no other
    acts = corpus_activations(bridge, spec, emotions, args.stories_per_emotion, args.neutral_limit, layers,
                              Pooling(), batch_size=args.batch_size, progress=False, corpus=args.corpus,
                              ) if whole else None
    written = []
    if acts is not None and args.stories_per_emotion is None:
        key = vectors_key(spec, emotions, layers, args.corpus, args.neutral_limit, VARIANCE_FRACTION)
        path = cache_dir() / "vectors" / f"{content_hash(key)}.safetensors"
        vectors_from(acts, spec, key).save(path)
        written.append(str(path))
    if args.out:
        if acts is None:
            raise ValueError("--out with --limit: vectors are built for the whole corpus (or --stories-per-emotion), "
                             "not for a --limit sample; drop --limit")
        out = Path(args.out)
        acts.vectors(spec=spec).save(out)
        written.append(str(out))
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, RuntimeError) as e:
        print(f"emolens.extract_corpus: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(report, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
