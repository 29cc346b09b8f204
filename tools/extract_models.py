"""Fill the extraction cache for the cross-model comparison of notebook 04 (same calls, so cache hits there).

python tools/extract_models.py [NAME ...]   (default: the three non-default embedded models)
"""

from __future__ import annotations

import sys
import time

# (stories per emotion, neutral dialogues) per model, read at the probe layer only (the forward pass stops
# there): the larger models are subsampled to keep a 2-core CPU run under about 20 minutes each; notebook 04
# states the subsample beside every number. Keep in step with OTHER_MODELS in notebooks 03 and 04.
SUBSAMPLE = {  # name: (stories per emotion, neutral dialogues, dtype)
    "gemma-3-270m": (None, None, "float32"),
    "qwen2.5-coder-0.5b-instruct": (4, 120, "float32"),
    # bf16 halves the time on this CPU; benchmarks/bf16_agreement.py shows cosine >= 0.9998 to fp32 at the
    # default layer on SmolLM2, and this model's weights are cached in bf16 anyway
    "qwen2.5-coder-1.5b-instruct": (2, 40, "bfloat16"),
}


def main(names: list[str]) -> None:
    import torch

    from emolens.models import load_model
    from emolens.recipe import corpus_activations

    torch.set_grad_enabled(False)
    for name in names:
        per, neutral, dtype = SUBSAMPLE[name]
        t = time.perf_counter()
        bridge, spec = load_model(name, dtype=dtype)
        acts = corpus_activations(bridge, spec, stories_per_emotion=per, neutral_limit=neutral,
                                  layers=[spec.probe_layer])
        print(f"{name}: {len(acts.stories)} stories, {acts.n_neutral} neutral, {time.perf_counter() - t:.0f} s",
              flush=True)
        del bridge, acts


if __name__ == "__main__":
    main(sys.argv[1:] or ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"])
