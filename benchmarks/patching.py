"""Patching speed on every minimal pair: exact residual patching over every layer x position from the first
edited token (replayed: only what each patch can change is computed), attribution patching over the same
grid, and two references measured beside them, pair by pair:

- the same exact grid with every patched run in full (``replay=False``) on the first ``--full-pairs`` pairs,
  for the speed-up and the largest difference between the two routes;
- plain Hugging Face forwards of the corrupted input in batches of ``--batch-size`` (``--hf-batches`` per
  pair), for the ratio of patched runs per second over plain forwards per second.

python benchmarks/patching.py [--pairs 48] [--full-pairs 4] [--hf-batches 4] [--batch-size 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from extraction import plain_causal_lm  # the extraction benchmark's plain-HF helper (same folder)
    from report import emit  # same folder
    from tqdm.auto import tqdm

    from emolens.analyses.patching import first_token, pair_cases
    from emolens.data.sets import load_minimal_pairs
    from emolens.models import load_model
    from emolens.patching import (
        attribution_patch_resid,
        get_act_patch_resid_post,
        logit_diff_metric,
        readout_metric,
        replay_blockers,
        run_with_cache,
    )

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=48)
    p.add_argument("--full-pairs", type=int, default=4)
    p.add_argument("--hf-batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(a.model)
    bridge, spec = model
    # speed does not depend on which direction is read: a fixed random one spares building the vectors
    direction = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(0))
    cases = pair_cases(spec, load_minimal_pairs(), [])[:a.pairs]
    hf = plain_causal_lm(a.model, "float32")
    times = {"exact_replay": 0.0, "exact_full_sample": 0.0, "exact_replay_same_sample": 0.0, "attribution": 0.0,
             "plain_hf_sample": 0.0}
    runs = full_runs = hf_runs = 0
    max_diff = {"readout": 0.0, "logit_diff": 0.0}
    for i, c in enumerate(tqdm(cases, desc="pairs")):
        ms = {"readout": readout_metric(direction, spec.probe_layer, c.colon),
              "logit_diff": logit_diff_metric(first_token(spec, c.emotion), first_token(spec, c.other))}
        ids = list(c.pair.corrupt_ids)
        cache = run_with_cache(model, list(c.pair.clean_ids))
        positions = list(range(c.pair.first_diff, len(ids)))
        n = spec.n_layers * sum(c.pair.partner[q] is not None for q in positions)  # patched runs in the grid
        t = time.perf_counter()
        fast = get_act_patch_resid_post(model, ids, cache, ms, positions=positions, partner=c.pair.partner,
                                        batch_size=a.batch_size)
        dt = time.perf_counter() - t
        times["exact_replay"] += dt
        runs += n
        if i < a.full_pairs:
            times["exact_replay_same_sample"] += dt
            t = time.perf_counter()
            full = get_act_patch_resid_post(model, ids, cache, ms, positions=positions, partner=c.pair.partner,
                                            batch_size=a.batch_size, replay=False)
            times["exact_full_sample"] += time.perf_counter() - t
            full_runs += n
            for j, name in enumerate(ms):
                d = (fast.values[j] - full.values[j]).abs().nan_to_num(0.0).max()
                max_diff[name] = max(max_diff[name], float(d))
        t = time.perf_counter()
        attribution_patch_resid(model, ids, cache, ms, partner=c.pair.partner)
        times["attribution"] += time.perf_counter() - t
        x = torch.tensor([ids] * a.batch_size)
        t = time.perf_counter()
        for _ in range(a.hf_batches):
            hf(input_ids=x)
        times["plain_hf_sample"] += time.perf_counter() - t
        hf_runs += a.hf_batches * a.batch_size
    plain_rate = hf_runs / times["plain_hf_sample"]
    out = {"model": a.model, "dtype": spec.dtype, "pairs": len(cases), "layers": spec.n_layers,
           "threads": torch.get_num_threads(), "batch_size": a.batch_size, "replay_blockers": replay_blockers(model),
           "patched_runs": runs, "seconds": times,
           "patched_runs_per_second": runs / times["exact_replay"],
           "plain_hf_forwards_per_second": plain_rate,
           "ratio_patched_over_plain": runs / times["exact_replay"] / plain_rate,
           "full_sample": {"pairs": min(a.full_pairs, len(cases)), "patched_runs": full_runs,
                           "ratio_full_over_plain": full_runs / times["exact_full_sample"] / plain_rate
                           if full_runs else None,
                           "speedup_replay_over_full": times["exact_full_sample"] / times["exact_replay_same_sample"]
                           if full_runs else None,
                           "max_abs_diff_replay_vs_full": max_diff}}
    emit(out, a.json)


if __name__ == "__main__":
    main()
