"""Fill the extraction cache for the cross-model comparison of notebook 04 (same calls, so cache hits there).

python tools/extract_models.py [NAME ...]   (default: every model of emolens.defaults.OTHER_MODELS)

Each model is read at its probe layer only (the forward pass stops there); the larger ones are subsampled
(stories per emotion, neutral dialogues) as `emolens.defaults.OTHER_MODELS` says, the one place that setting
lives, so notebook 04 reuses this cache.
"""

from __future__ import annotations

import sys
import time


def main(names: list[str]) -> None:
    import torch

    from emolens.defaults import corpus, other_models
    from emolens.models import load_model
    from emolens.vectors import corpus_activations

    torch.set_grad_enabled(False)
    for m in other_models(",".join(names) if names else "all"):
        t = time.perf_counter()
        model = load_model(m.name, dtype=m.dtype)
        acts = corpus_activations(*model, stories_per_emotion=m.stories_per_emotion, neutral_limit=m.neutral_limit,
                                  corpus=corpus(),
                                  layers=[model.spec.probe_layer])
        print(f"{m.name}: {len(acts.stories)} stories, {acts.n_neutral} neutral, {time.perf_counter() - t:.0f} s",
              flush=True)
        del model, acts


if __name__ == "__main__":
    main(sys.argv[1:])
