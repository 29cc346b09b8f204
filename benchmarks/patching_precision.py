"""How much of a patching effect is rounding: the exact grid of a few minimal pairs (every 3rd layer, every
position from the edit) in bf16 with two batch sizes, replayed and in full, against float32 replayed. The
effect is the patched value minus the unpatched one; the table gives the largest difference between two
routes beside the largest float32 effect, per metric.

python benchmarks/patching_precision.py [--pairs 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools

import torch


def main() -> None:
    from report import emit  # same folder

    from emolens.analyses.patching import first_token, pair_cases
    from emolens.data.sets import load_minimal_pairs
    from emolens.models import load_model
    from emolens.patching import get_act_patch_resid_post, logit_diff_metric, readout_metric, run_with_cache

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    models = {"bfloat16": load_model(a.model, dtype="bfloat16"), "float32": load_model(a.model, dtype="float32")}
    spec = models["float32"].spec
    direction = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(0))
    routes = {"bf16 full, batch 16": ("bfloat16", {"replay": False}),
              "bf16 full, batch 7": ("bfloat16", {"replay": False, "batch_size": 7}),
              "bf16 replay": ("bfloat16", {}), "fp32 replay": ("float32", {})}
    layers = list(range(0, spec.n_layers, 3))
    worst: dict[str, dict[str, float]] = {}
    largest = {"readout": 0.0, "logit_diff": 0.0}
    cases = [c for c in pair_cases(spec, load_minimal_pairs(), [])][:a.pairs]
    for c in cases:
        ms = {"readout": readout_metric(direction, spec.probe_layer, c.colon),
              "logit_diff": logit_diff_metric(first_token(spec, c.emotion), first_token(spec, c.other))}
        ids = list(c.pair.corrupt_ids)
        positions = list(range(c.pair.first_diff, len(ids)))
        caches = {dt: run_with_cache(m, list(c.pair.clean_ids)) for dt, m in models.items()}
        eff = {}
        for name, (dt, kw) in routes.items():
            g = get_act_patch_resid_post(models[dt], ids, caches[dt], ms, layers=layers, positions=positions,
                                         partner=c.pair.partner, **kw)
            eff[name] = (g.values - g.corrupt[:, None, None]).nan_to_num(0.0)
        for j, m in enumerate(ms):
            largest[m] = max(largest[m], float(eff["fp32 replay"][j].abs().max()))
        for x, y in itertools.combinations(routes, 2):
            row = worst.setdefault(f"{x} vs {y}", {"readout": 0.0, "logit_diff": 0.0})
            for j, m in enumerate(ms):
                row[m] = max(row[m], float((eff[x][j] - eff[y][j]).abs().max()))
    out = {"model": a.model, "pairs": [c.id for c in cases], "layers": layers, "threads": torch.get_num_threads(),
           "largest_fp32_effect": largest, "largest_difference_in_effect": worst}
    emit(out, a.json)


if __name__ == "__main__":
    main()
