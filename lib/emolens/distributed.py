"""Data-parallel extraction on ``torch.distributed``: one process per CPU core group or per GPU, one result.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address);
:func:`init_ranks` joins the process group, gloo on CPUs and NCCL on GPUs, and the same code runs on one
node or many. Without ``torchrun`` it returns a single rank and every collective below is a no-op.

What each rank does: it tokenizes all texts (cheap), takes its length-balanced shard (:func:`shard`), runs
only those through the model, and checkpoints its chunks under a key naming its rank, the world size, its
shard and every extraction setting. Then the ranks reduce:

- per-story pooled means: slice by slice of rows, each rank writes its own rows into a zero buffer and the
  ranks sum the buffers onto rank 0 (adding zeros is exact, so the result is the single-process one up to the
  rounding of other batch compositions). Only rank 0 ever holds all rows ([n, L, d] float32), and a slice
  moved through the GPU under NCCL is at most ``REDUCE_BYTES``;
- neutral statistics: token counts, means and centred sums of squares merge exactly by the pairwise formula
  (``m2 = sum_r m2_r + n_r (mean_r - mean)(mean_r - mean)^T``), each term an all-reduce of a sum.

Rank 0 alone stores the reduced result in the ordinary cache (:mod:`emolens.cache`), under the same key as a
single-process run, so notebooks find it; the per-rank checkpoints are then deleted. A rerun after an
interruption resumes each rank from its own checkpoints, provided the world size and chunk size are the same
(a manifest written by rank 0 says which; anything else is refused with the choices, or discarded with
``refresh``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emolens.activations import (
    Pooling,
    checkpointed,
    covariance_from_moments,
    neutral_moments,
    pooled_means,
)
from emolens.cache import cached, content_hash
from emolens.models.spec import ModelSpec

if TYPE_CHECKING:
    import torch
    from transformer_lens.model_bridge import TransformerBridge

BACKENDS = ("gloo", "nccl")
REDUCE_BYTES = 1 << 28  # per-story rows are reduced in slices of at most 256 MB


class ResumeError(RuntimeError):
    """Checkpoints of this extraction exist but were cut for another world size or chunk size."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"  # where this rank's collectives run: its own GPU under NCCL, the CPU under gloo

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise RuntimeError(f"{name} is not set: launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK")
        return default
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r}: expected a non-negative integer (torchrun sets it)")
    return int(raw)


def init_ranks(backend: str | None = None) -> Ranks:
    """Join the process group that ``torchrun`` set up, or return a single rank when there is none.

    ``backend``: None picks NCCL when CUDA is present, else gloo; "nccl" without CUDA is refused. Under NCCL
    each rank takes GPU ``LOCAL_RANK`` as its current device.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(f"WORLD_SIZE={world}: must be >= 1")
    if world == 1:
        return Ranks()
    import torch
    import torch.distributed as dist

    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", rank)
    if rank >= world:
        raise ValueError(f"RANK={rank} is not below WORLD_SIZE={world}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not allowed: choose one of {BACKENDS} (gloo for CPUs, nccl for GPUs)")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA GPUs and this machine has none: use 'gloo' on CPUs")
    device = "cpu"
    if backend == "nccl":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) on this node: start at "
                             "most one rank per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return Ranks(rank, world, local, backend, device)


def close_ranks(ranks: Ranks) -> None:
    """Leave the process group (a no-op for a single rank)."""
    import torch.distributed as dist

    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Split text indices over ``world_size`` ranks so that their token counts are as even as a greedy pass
    makes them: longest text first, each to the rank with the fewest tokens so far (ties to the lowest rank).
    Deterministic, so every rank computes every shard the same way; each shard is returned in index order."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    loads, out = [0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        out[r].append(i)
        loads[r] += lengths[i]
    return [sorted(s) for s in out]


# ---- collectives (no-ops on one rank) ----------------------------------------------------------------------
def all_reduce_sum(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of ``t`` over ranks, on ``t``'s device (moved to the rank's GPU for NCCL and back)."""
    import torch.distributed as dist

    if not ranks.distributed:
        return t
    x = t.to(ranks.device).contiguous()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device)


def reduce_rows(n: int, mine: Sequence[int], rows: torch.Tensor, ranks: Ranks) -> torch.Tensor | None:
    """Assemble on rank 0 the ``[n, ...]`` tensor whose row ``mine[k]`` is ``rows[k]`` on the rank that owns it
    (each row owned by exactly one rank). Other ranks get None. Sliced so that no buffer exceeds
    ``REDUCE_BYTES``: neither a GPU under NCCL nor any rank's memory needs the whole tensor."""
    import torch
    import torch.distributed as dist

    tail = tuple(rows.shape[1:])
    out = torch.zeros((n, *tail), dtype=rows.dtype) if ranks.is_main else None
    owner = torch.full((n,), -1, dtype=torch.long)
    owner[torch.tensor(list(mine), dtype=torch.long)] = torch.arange(len(mine))
    row_bytes = math.prod(tail) * rows.element_size()  # from the shape: a rank may own no row at all
    step = max(1, REDUCE_BYTES // max(1, row_bytes))
    for a in range(0, n, step):
        b = min(n, a + step)
        buf = torch.zeros((b - a, *tail), dtype=rows.dtype)
        here = (owner[a:b] >= 0).nonzero().flatten()
        buf[here] = rows[owner[a:b][here]]
        if ranks.distributed:
            x = buf.to(ranks.device)
            dist.reduce(x, dst=0, op=dist.ReduceOp.SUM)
            buf = x.cpu() if out is not None else buf  # only rank 0's copy holds the sum
        if out is not None:
            out[a:b] = buf
    return out


def broadcast(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (others pass a tensor of the same shape and dtype)."""
    import torch.distributed as dist

    if not ranks.distributed:
        return t
    x = t.to(ranks.device).contiguous()
    dist.broadcast(x, src=0)
    return x.to(t.device)


def broadcast_text(text: str, ranks: Ranks) -> str:
    """Rank 0's ``text`` on every rank, as UTF-8 bytes in tensors (no pickling of objects)."""
    import torch

    if not ranks.distributed:
        return text
    data = torch.tensor(list(text.encode()), dtype=torch.uint8) if ranks.is_main else torch.zeros(0, dtype=torch.uint8)
    n = int(broadcast(torch.tensor([data.numel()], dtype=torch.long), ranks))
    buf = broadcast(data if ranks.is_main else torch.zeros(n, dtype=torch.uint8), ranks)
    return bytes(buf.tolist()).decode()


def barrier(ranks: Ranks) -> None:
    import torch.distributed as dist

    if ranks.distributed:
        dist.barrier()


def on_main(fn: Callable[[], str], ranks: Ranks) -> str:
    """Run ``fn`` on rank 0 only and give its answer to all ranks; an error there is raised on every rank
    (rather than leaving the others waiting in the next collective)."""
    err = ""
    out = ""
    if ranks.is_main:
        try:
            out = fn()
        except (ResumeError, ValueError, OSError) as e:
            err = f"{type(e).__name__}: {e}"
    err = broadcast_text(err, ranks)
    if err:
        if ranks.is_main:
            raise ResumeError(err.split(": ", 1)[1])
        raise ResumeError(f"rank 0 stopped the run: {err}")
    return broadcast_text(out, ranks)


# ---- checkpoints and resume -----------------------------------------------------------------------------------
def _manifest(folder: Path, key: dict[str, Any]) -> Path:
    return folder / f"{content_hash(key)}.ranks.json"


def resume_guard(folder: Path, key: dict[str, Any], world_size: int, chunk_size: int, tags: Sequence[str],
                 refresh: bool) -> str:
    """Check (on rank 0) that checkpoints already made for ``key`` were cut the way this run cuts them, then
    record how this run cuts them. Different world or chunk size: :class:`ResumeError` naming both and the
    choices, or with ``refresh`` the old checkpoints are deleted. Returns "resume", "fresh" or "discarded"."""
    path = _manifest(folder, key)
    status = "fresh"
    if path.exists():
        try:
            made = json.loads(path.read_text())
            old = (int(made["world_size"]), int(made["chunk_size"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            made, old = {"tags": []}, None  # unreadable: its chunks are keyed anyway, so start a fresh manifest
        if old is not None and old != (world_size, chunk_size) and not refresh:
            raise ResumeError(
                f"checkpoints of this extraction in {folder} were made by {old[0]} rank(s) with chunk size "
                f"{old[1]}, and this run has {world_size} rank(s) with chunk size {chunk_size}. Allowed: resume "
                f"with the same (torchrun --nproc-per-node {old[0]} ... --chunk-size {old[1]}, or a single process "
                f"when it was 1), or refresh (--refresh) to delete them and start over")
        if refresh or old != (world_size, chunk_size):
            for tag in made.get("tags", []):
                for f in folder.glob(f"{tag}-chunk*"):
                    f.unlink()
            status = "discarded"
        else:
            status = "resume"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"world_size": world_size, "chunk_size": chunk_size, "tags": list(tags)}, indent=1))
    os.replace(tmp, path)
    return status


class _Miss(Exception):
    pass


def cached_only(kind: str, key: dict[str, Any], folder: Path,
                check: Any = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The verified cached ``(tensors, meta)`` of ``key``, or None when there are none (nothing is computed)."""

    def miss() -> tuple[dict[str, Any], dict[str, Any]]:
        raise _Miss

    try:
        return cached(kind, key, miss, folder=folder, check=check)
    except _Miss:
        return None


# ---- the two extraction steps, sharded ------------------------------------------------------------------------
def sharded_story_activations(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layers: list[int],
                              pooling: Pooling, site: str, batch_size: int, chunk_size: int, progress: bool,
                              root: Path, refresh: bool, ranks: Ranks) -> tuple[Any, Any]:
    """Per-story pooled means ``[n, L, d]`` and counts ``[n]`` over ranks, returned on rank 0 and stored by it
    under the single-process cache key (:func:`emolens.vectors.recipe.story_key`); other ranks get
    ``(None, None)`` (they need not hold all rows: at paper scale that is tens of GB per process)."""
    import torch

    from emolens.vectors.recipe import story_check, story_key

    n, L, d = len(texts), len(layers), spec.d_model
    key = story_key(spec, texts, layers, pooling, site)
    check = story_check(n, L, d)
    hit = cached_only("activations", key, root, check) if ranks.is_main and not refresh else None
    if int(broadcast(torch.tensor([hit is not None], dtype=torch.long), ranks)):
        return (hit[0]["means"], hit[0]["counts"]) if hit else (None, None)

    shards = shard([len(spec.encode(t)) for t in texts], ranks.world_size)
    rank_keys = [dict(key, chunk_size=chunk_size, n_chunks=-(-len(s) // chunk_size), rank=r,
                      world_size=ranks.world_size, shard=content_hash(s)) for r, s in enumerate(shards)]
    folder = root / "checkpoints"
    on_main(lambda: resume_guard(folder, key, ranks.world_size, chunk_size,
                                 [content_hash(k) for k in rank_keys], refresh), ranks)
    mine, my_key = shards[ranks.rank], rank_keys[ranks.rank]

    def one(c: int) -> dict[str, Any]:
        part = [texts[i] for i in mine[c * chunk_size:(c + 1) * chunk_size]]
        m, k = pooled_means(bridge, spec, part, layers, pooling, site, batch_size, progress=progress)
        return {"means": m, "counts": k}

    my_means = torch.zeros((0, L, d), dtype=torch.float32)
    my_counts = torch.zeros(0, dtype=torch.long)
    if mine:
        parts = checkpointed(my_key["n_chunks"], folder, my_key, one, progress)
        my_means = torch.cat([p["means"] for p in parts])
        my_counts = torch.cat([p["counts"] for p in parts])
    means, counts = reduce_rows(n, mine, my_means, ranks), reduce_rows(n, mine, my_counts, ranks)
    if ranks.is_main:
        cached("activations", key, lambda: ({"means": means, "counts": counts},
                                            {"n_texts": n, "world_size": ranks.world_size}),
               folder=root, refresh=True, check=check)
    barrier(ranks)  # the result is stored: now each rank may drop its checkpoints
    for stale in folder.glob(f"{content_hash(my_key)}-chunk*"):
        stale.unlink()
    if ranks.is_main:
        _manifest(folder, key).unlink(missing_ok=True)
    return means, counts


def merge_moments(st: dict[str, Any], ranks: Ranks) -> dict[str, Any]:
    """Merge every rank's ``{n_tokens, mean, m2}`` (from :func:`emolens.activations.neutral_moments`) into
    those of all their tokens: exact, since each term is a sum over ranks (float64 throughout)."""
    import torch

    n_r = st["n_tokens"]
    n = int(all_reduce_sum(torch.tensor([n_r], dtype=torch.float64), ranks))
    total = all_reduce_sum(st["mean"].double() * n_r, ranks)
    mean = total / max(n, 1)
    shift = st["mean"].double() - mean if n_r else torch.zeros_like(mean)
    m2 = torch.empty_like(st["m2"], dtype=torch.float64)
    for j in range(m2.shape[0]):  # one layer at a time: L x d x d float64 may not fit a GPU at once
        m2[j] = all_reduce_sum(st["m2"][j].double() + n_r * torch.outer(shift[j], shift[j]), ranks)
    return {"n_tokens": n, "layers": st["layers"], "mean": mean, "m2": m2}


def sharded_neutral_covariance(bridge: TransformerBridge, spec: ModelSpec, texts: Sequence[str], layers: list[int],
                               site: str, batch_size: int, progress: bool, root: Path, accumulate: str | None,
                               refresh: bool, ranks: Ranks) -> dict[str, Any]:
    """Neutral mean and covariance over ranks, as :func:`emolens.vectors.recipe.neutral_covariance` returns
    them; stored by rank 0 under the single-process key."""
    import torch

    from emolens.vectors.recipe import neutral_key

    L, d = len(layers), spec.d_model
    key = neutral_key(spec, texts, layers, site, accumulate)
    hit = cached_only("neutral", key, root) if ranks.is_main and not refresh else None
    if int(broadcast(torch.tensor([hit is not None], dtype=torch.long), ranks)):
        got = hit[0] if hit else {"mean": torch.empty((L, d), dtype=torch.float64),
                                  "cov": torch.empty((L, d, d), dtype=torch.float64)}
        n_tok = int(broadcast(torch.tensor([hit[1]["n_tokens"] if hit else 0], dtype=torch.long), ranks))
        return {"mean": broadcast(got["mean"], ranks), "cov": broadcast(got["cov"], ranks), "n_tokens": n_tok,
                "layers": layers}
    shards = shard([len(spec.encode(t)) for t in texts], ranks.world_size)
    mine = [texts[i] for i in shards[ranks.rank]]
    st = neutral_moments(bridge, spec, mine, layers, site, batch_size, progress=progress, accumulate=accumulate)
    out = covariance_from_moments(merge_moments(st, ranks))
    if ranks.is_main:
        cached("neutral", key, lambda: ({"mean": out["mean"], "cov": out["cov"]}, {"n_tokens": out["n_tokens"]}),
               folder=root, refresh=True)
    barrier(ranks)
    return {"mean": out["mean"], "cov": out["cov"], "n_tokens": out["n_tokens"], "layers": layers}
