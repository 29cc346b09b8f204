"""Do bf16 activations give the same emotion vectors as fp32? Cosine per emotion and layer.

python benchmarks/bf16_agreement.py [--model NAME] [--emotions exemplars|all] [--neutral 60]
Runs the same stories and neutral dialogues in float32 and bfloat16 (the bridge and the hooks in that dtype,
pooled sums always in float32) and prints the minimum and median cosine between matching vectors.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from emolens.data import load_emotions
    from emolens.models import load_model
    from emolens.vectors import corpus_activations

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--emotions", default="exemplars")
    p.add_argument("--neutral", type=int, default=60)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    emos = [e.emotion for e in load_emotions() if a.emotions == "all" or e.exemplar]
    out = {}
    for dtype in ("float32", "bfloat16"):
        t = time.perf_counter()
        bridge, spec = load_model(a.model, dtype=dtype)
        acts = corpus_activations(bridge, spec, emotions=emos, neutral_limit=a.neutral, progress=False)
        out[dtype] = acts.vectors(0.5)
        print(f"{dtype}: {time.perf_counter() - t:.0f} s")
    for name, get in (("denoised", lambda ev: ev.vectors), ("raw centred", lambda ev: ev.centred_raw())):
        x, y = get(out["float32"]), get(out["bfloat16"])
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)  # [E, L]
        worst = divmod(int(cos.argmin()), cos.shape[1])
        print(f"{name}: cosine fp32 vs bf16 over {cos.numel()} (emotion, layer) pairs: min {cos.min():.5f} "
              f"({emos[worst[0]]}, layer {worst[1]}), median {cos.median():.5f}; at the probe layer min "
              f"{cos[:, spec.probe_layer].min():.5f}")


if __name__ == "__main__":
    main()
