"""Forced-choice tournament speed: emolens' pair scoring (with shared-prefix key/value reuse, the default, and
without it) against a plain Hugging Face forward that computes the logits of the last position only, over the
same prompts and batches, interleaved batch by batch (the order rotates every batch).

Each batch is its own ``last_position_logits`` call, so "emolens" runs the shared prefix once per batch; a
tournament runs it once per chunk of 256 pairs, so this slightly understates the reuse's gain. The largest
difference between the two emolens methods (logits, and P(first option)) is reported beside the times: in
float32 it is rounding (< 1e-4); in bfloat16 it is of the size that changing the batch size alone gives.

python benchmarks/preferences.py [--dtype bfloat16] [--pairs 4032] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from extraction import padded, plain_causal_lm  # the extraction benchmark's plain-HF helpers (same folder)
    from report import emit  # same folder

    from emolens.activations import length_batches
    from emolens.analyses.preferences import (
        all_pairs,
        choice_prompt,
        last_position_logits,
        letter_ids,
        shared_prefix_length,
    )
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
    methods = ["emolens", "emolens_no_prefix", "plain_hf"]
    times = dict.fromkeys(methods, 0.0)
    a_id, b_id = letter_ids(model.spec)
    diff = {"logit": 0.0, "p_first": 0.0}
    for r, batch in enumerate(batches):
        got = {}
        for method in methods[r % 3:] + methods[:r % 3]:
            t = time.perf_counter()
            if method == "plain_hf":
                ids, mask = padded(seqs, batch)
                h = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                head(h[torch.arange(len(batch)), mask.sum(1) - 1])  # logits of the last position only
            else:
                got[method] = last_position_logits(model, [prompts[i] for i in batch], batch_size=len(batch),
                                                   prefix_reuse=method == "emolens")
            times[method] += time.perf_counter() - t
        p = {m: torch.softmax(x[:, [a_id, b_id]], 1)[:, 0] for m, x in got.items()}
        diff["logit"] = max(diff["logit"], (got["emolens"] - got["emolens_no_prefix"]).abs().max().item())
        diff["p_first"] = max(diff["p_first"], (p["emolens"] - p["emolens_no_prefix"]).abs().max().item())
    # the tournament's own shape: one call over every prompt (the prefix runs once), the number the issue's
    # "full tournament in under 2 minutes" is about
    t = time.perf_counter()
    last_position_logits(model, prompts, batch_size=a.batch_size)
    one_call = time.perf_counter() - t
    n_tok = sum(len(s) for s in seqs)
    out = {"model": a.model, "dtype": a.dtype, "pairs": len(pairs), "tokens": n_tok, "threads": torch.get_num_threads(),
           "shared_prefix_tokens": shared_prefix_length(seqs), "seconds": times,
           "seconds_one_call_with_prefix_reuse": one_call,
           "ratio_emolens_over_plain": times["plain_hf"] / times["emolens"],
           "ratio_emolens_no_prefix_over_plain": times["plain_hf"] / times["emolens_no_prefix"],
           "speedup_prefix_reuse": times["emolens_no_prefix"] / times["emolens"],
           "max_abs_diff_prefix_vs_no_prefix": diff}
    emit(out, a.json)


if __name__ == "__main__":
    main()
