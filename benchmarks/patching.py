"""Patching speed: exact residual patching over every layer x position (from the first differing token) of the
minimal pairs, and attribution patching over the same grid, against plain Hugging Face forwards of the same
number of sequences in the same batches (the ratio is patched runs per second over plain forwards per second).

python benchmarks/patching.py [--pairs 48] [--batch-size 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from extraction import plain_causal_lm  # the extraction benchmark's plain-HF helper (same folder)

    from emolens.analyses.patching import first_token, pair_cases
    from emolens.data.sets import load_minimal_pairs
    from emolens.models import load_model
    from emolens.patching import (
        attribution_patch_resid,
        get_act_patch_resid_post,
        logit_diff_metric,
        readout_metric,
        run_with_cache,
    )

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(a.model)
    bridge, spec = model
    # speed does not depend on which direction is read: a fixed random one spares building the vectors
    direction = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(0))
    cases = [c for c in pair_cases(spec, load_minimal_pairs(), []) if c.pair.same_length][:a.pairs]
    hf = plain_causal_lm(a.model, "float32")
    times = {"exact": 0.0, "attribution": 0.0, "plain_hf": 0.0}
    runs = 0
    for c in cases:
        ms = {"readout": readout_metric(direction, spec.probe_layer, c.colon),
              "logit_diff": logit_diff_metric(first_token(spec, c.emotion), first_token(spec, c.other))}
        ids = list(c.pair.corrupt_ids)
        cache = run_with_cache(model, list(c.pair.clean_ids))
        positions = list(range(c.pair.first_diff, len(ids)))
        t = time.perf_counter()
        get_act_patch_resid_post(model, ids, cache, ms, positions=positions, batch_size=a.batch_size)
        times["exact"] += time.perf_counter() - t
        n = spec.n_layers * len(positions)
        runs += n
        t = time.perf_counter()
        attribution_patch_resid(model, ids, cache, ms)
        times["attribution"] += time.perf_counter() - t
        x = torch.tensor([ids] * a.batch_size)
        t = time.perf_counter()
        for _ in range(0, n, a.batch_size):
            hf(input_ids=x)
        times["plain_hf"] += time.perf_counter() - t
    out = {"model": a.model, "pairs": len(cases), "patched_runs": runs, "threads": torch.get_num_threads(),
           "seconds": times, "patched_runs_per_second": runs / times["exact"],
           "ratio_patched_over_plain": times["plain_hf"] / times["exact"]}
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
