"""Forced-choice tournament speed: emolens' pair scoring against a plain Hugging Face forward that computes the
logits of the last position only, over the same prompts and batches, interleaved batch by batch.

python benchmarks/preferences.py [--dtype bfloat16] [--pairs 4032] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from extraction import padded, plain_causal_lm  # the extraction benchmark's plain-HF helpers (same folder)

    from emolens.activations import length_batches
    from emolens.analyses.preferences import all_pairs, choice_prompt, last_position_logits
    from emolens.data.sets import load_activities
    from emolens.models import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--pairs", type=int, default=4032, help="how many ordered pairs of the full tournament")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    model = load_model(a.model, dtype=a.dtype)
    acts = [x.text for x in load_activities()]
    pairs = all_pairs(len(acts))[:a.pairs]
    prompts = [choice_prompt(model.spec, acts[i], acts[j]) for i, j in pairs]
    seqs = [model.spec.encode(t) for t in prompts]
    hf = plain_causal_lm(a.model, a.dtype)
    decoder, head = hf.model, hf.lm_head  # the decoder's output already carries the final norm
    batches = length_batches([len(s) for s in seqs], a.batch_size)
    times = {"emolens": 0.0, "plain_hf": 0.0}
    for r, batch in enumerate(batches):
        order = ["emolens", "plain_hf"] if r % 2 == 0 else ["plain_hf", "emolens"]
        for method in order:
            t = time.perf_counter()
            if method == "emolens":
                last_position_logits(model, [prompts[i] for i in batch], batch_size=len(batch))
            else:
                ids, mask = padded(seqs, batch)
                h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                head(h[torch.arange(len(batch)), mask.sum(1) - 1])  # logits of the last position only
            times[method] += time.perf_counter() - t
    n_tok = sum(len(s) for s in seqs)
    out = {"model": a.model, "dtype": a.dtype, "pairs": len(pairs), "tokens": n_tok, "threads": torch.get_num_threads(),
           "seconds": times, "ratio_emolens_over_plain": times["plain_hf"] / times["emolens"]}
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
