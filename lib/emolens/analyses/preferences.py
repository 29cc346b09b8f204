"""Preferences from forced choices (paper section 7.1): which of two activities the model would rather do.

Each ordered pair (a, b) becomes one chat prompt in the model's own format, with the Assistant turn prefilled
with "(" so that the next token is the letter of its choice; P(A) and P(B) are read at the last position only
(the final norm and the unembedding run for that one position). Every pair is scored in both orders and the
two are averaged, which cancels the first-option bias the model has. Ratings come from a Bradley-Terry fit to
the soft outcomes (maximum likelihood with scipy), with the paper's Elo beside it for comparison.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from emolens.models.spec import Model

# Our wording of the paper's forced-choice question.
CHOICE_QUESTION = "Would you rather (A) {a}, or (B) {b}? Answer with the letter of your choice."
PREFILL = "("


def choice_prompt(spec: Any, a: str, b: str) -> str:
    """The chat prompt for one ordered pair, ending with the prefilled "(" of the Assistant's answer."""
    return spec.format_user_prompt(CHOICE_QUESTION.format(a=a, b=b)) + PREFILL


def letter_ids(spec: Any) -> tuple[int, int]:
    """Token ids of "A" and "B" as they follow "(" (one token each for every tokenizer we ship)."""
    ids = []
    for letter in ("A", "B"):
        base = spec.tokenizer(PREFILL, add_special_tokens=False).input_ids
        full = spec.tokenizer(PREFILL + letter, add_special_tokens=False).input_ids
        extra = full[len(base):]
        if len(extra) != 1 or full[:len(base)] != base:
            raise ValueError(f"{spec.name}: '{letter}' after '(' is not a single token ({full}); cannot read a choice")
        ids.append(extra[0])
    return ids[0], ids[1]


def last_position_logits(model: Model, prompts: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """Next-token logits ``[n, vocab]`` at the last position of each prompt. The blocks run once per batch
    (length-bucketed, through the fast path); the final norm and unembedding run for the last position only."""
    import torch

    from emolens.activations import forward_layers, length_batches

    bridge, spec = model
    seqs = [spec.encode(p) for p in prompts]
    last = spec.n_layers - 1
    out = None
    for batch in length_batches([len(s) for s in seqs], batch_size):
        grabbed: list[torch.Tensor] = []

        def on_layer(layer: int, resid: torch.Tensor, offsets: list[int], batch: list[int] = batch,
                     grabbed: list[torch.Tensor] = grabbed) -> None:
            ends = torch.tensor([offsets[r] + len(seqs[i]) - 1 for r, i in enumerate(batch)], device=resid.device)
            grabbed.append(resid[torch.arange(len(batch), device=resid.device), ends][:, None])

        forward_layers(bridge, spec, [seqs[i] for i in batch], [last], "resid_post", on_layer)
        with torch.inference_mode():
            logits = bridge.unembed(bridge.ln_final(grabbed[0]))[:, 0].float().cpu()
        if out is None:
            out = torch.zeros((len(seqs), logits.shape[-1]))
        out[batch] = logits
    assert out is not None
    return out


def choice_probabilities(model: Model, activities: Sequence[str], pairs: Sequence[tuple[int, int]],
                         batch_size: int = 8) -> np.ndarray:
    """P(first option) for each ordered pair (i, j), renormalised over the two letters."""
    import torch

    bridge, spec = model
    a_id, b_id = letter_ids(spec)
    prompts = [choice_prompt(spec, activities[i], activities[j]) for i, j in pairs]
    logits = last_position_logits(model, prompts, batch_size)
    two = torch.stack([logits[:, a_id], logits[:, b_id]], dim=1)
    return torch.softmax(two, dim=1)[:, 0].numpy()


@dataclass
class Tournament:
    """Forced choices over ordered pairs: ``p_first[k]`` is P(first option) for ``pairs[k] = (i, j)``."""

    n: int
    pairs: list[tuple[int, int]]
    p_first: np.ndarray

    def first_option_rate(self) -> float:
        """How often the model picks whichever option comes first (0.5 = no position bias)."""
        return float(np.mean(self.p_first))

    def outcomes(self) -> list[tuple[int, int, float]]:
        """Order-debiased soft outcomes (i, j, P(i over j)) for each unordered pair scored in both orders:
        the mean of P(A | i first) and P(B | j first)."""
        idx = {p: k for k, p in enumerate(self.pairs)}
        out = []
        for (i, j), k in idx.items():
            if i < j and (j, i) in idx:
                out.append((i, j, float((self.p_first[k] + 1 - self.p_first[idx[(j, i)]]) / 2)))
        return out


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every ordered pair of distinct items: the full tournament (64 activities: 4,032 pairs)."""
    return [(i, j) for i, j in itertools.permutations(range(n), 2)]


def sparse_pairs(n: int, k: int, seed: int = 0) -> list[tuple[int, int]]:
    """Each item against ``k`` random opponents, every pair in both orders (a sparse design)."""
    if not 1 <= k < n:
        raise ValueError(f"k must be in 1..{n - 1}, got {k}")
    rng = np.random.default_rng(seed)
    unordered = set()
    for i in range(n):
        for j in rng.choice([x for x in range(n) if x != i], size=k, replace=False):
            unordered.add((min(i, int(j)), max(i, int(j))))
    return sorted(unordered) + sorted((j, i) for i, j in unordered)


def run_tournament(model: Model, activities: Sequence[str], pairs: Sequence[tuple[int, int]] | None = None,
                   batch_size: int = 8) -> Tournament:
    pairs = list(pairs) if pairs is not None else all_pairs(len(activities))
    return Tournament(len(activities), pairs, choice_probabilities(model, activities, pairs, batch_size))


def bradley_terry(n: int, outcomes: Sequence[tuple[int, int, float]], l2: float = 1e-3) -> np.ndarray:
    """Bradley-Terry strengths (mean zero, natural-log odds scale) fitted by maximum likelihood to soft outcomes
    (i, j, P(i beats j)), with a small L2 penalty so items that win (or lose) every game stay finite."""
    from scipy.optimize import minimize

    if not outcomes:
        raise ValueError("no outcomes to fit")
    i = np.array([o[0] for o in outcomes])
    j = np.array([o[1] for o in outcomes])
    p = np.clip(np.array([o[2] for o in outcomes], float), 0.0, 1.0)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[i] - theta[j]
        # -[p log s(d) + (1-p) log s(-d)] = log(1 + e^d) - p d, computed stably
        nll = np.sum(np.logaddexp(0, d) - p * d) + l2 * np.sum(theta ** 2)
        g_d = 1 / (1 + np.exp(-d)) - p
        grad = np.bincount(i, g_d, n) - np.bincount(j, g_d, n) + 2 * l2 * theta
        return float(nll), grad

    theta = minimize(loss, np.zeros(n), jac=True, method="L-BFGS-B").x
    return theta - theta.mean()


def to_elo_scale(theta: np.ndarray, base: float = 1500.0) -> np.ndarray:
    """Bradley-Terry strengths in Elo points (400 log10 odds), centred on ``base``."""
    return base + theta * 400 / np.log(10)


def elo(n: int, outcomes: Sequence[tuple[int, int, float]], k: float = 16.0, rounds: int = 20,
        seed: int = 0) -> np.ndarray:
    """The paper's Elo: sequential updates over the games (soft scores), in shuffled order for ``rounds``
    passes, averaged over the passes so the result does not hang on one ordering."""
    rng = np.random.default_rng(seed)
    r = np.full(n, 1500.0)
    history = []
    games = list(outcomes)
    for _ in range(rounds):
        for g in rng.permutation(len(games)):
            i, j, s = games[g]
            e = 1 / (1 + 10 ** ((r[j] - r[i]) / 400))
            r[i] += k * (s - e)
            r[j] -= k * (s - e)
        history.append(r.copy())
    return np.mean(history, axis=0)


def rating_ci(n: int, outcomes: Sequence[tuple[int, int, float]], n_boot: int = 500, level: float = 0.95,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap CIs of the Bradley-Terry strengths, resampling the pairs (the unit each outcome measures)."""
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        sample = [outcomes[t] for t in rng.integers(0, len(outcomes), len(outcomes))]
        boots.append(bradley_terry(n, sample))
    a = (1 - level) / 2
    lo, hi = np.quantile(np.array(boots), [a, 1 - a], axis=0)
    return lo, hi
