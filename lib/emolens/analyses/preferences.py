"""Preferences from forced choices (paper section 7.1): which of two activities the model would rather do.

Each ordered pair (a, b) becomes one chat prompt in the model's own format, with the Assistant turn prefilled
with "(" so that the next token is the letter of its choice; P(A) and P(B) are read at the last position only
(the final norm and the unembedding run for that one position); the prompts' shared head (chat header and
"Would you rather (A) ") runs once and every batch continues from its key/value cache. Every pair is scored
in both orders and the two are averaged, which cancels the first-option bias the model has. Ratings come from
a Bradley-Terry fit to the soft outcomes (maximum likelihood with scipy), with the paper's Elo beside it for
comparison.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emolens.replay import cache_keyword, final_logits, last_block_output, prefix_cache, repeated

if TYPE_CHECKING:
    import torch

    from emolens.models.spec import Model

# Our wording of the paper's forced-choice question.
CHOICE_QUESTION = "Would you rather (A) {a}, or (B) {b}? Answer with the letter of your choice."
PREFILL = "("
log = logging.getLogger(__name__)


def choice_prompt(spec: Any, a: str, b: str) -> str:
    """The chat prompt for one ordered pair, ending with the prefilled "(" of the Assistant's answer."""
    return spec.format_user_prompt(CHOICE_QUESTION.format(a=a, b=b)) + PREFILL


def letter_ids(spec: Any) -> tuple[int, int]:
    """Token ids of "A" and "B" as they follow "(". The prompt ends in "(", so the answer is the letter's own
    token; where a tokenizer would merge "(A" into one token (Qwen's), the bare letter's token is that answer."""
    ids = []
    for letter in ("A", "B"):
        base = spec.tokenizer(PREFILL, add_special_tokens=False).input_ids
        full = spec.tokenizer(PREFILL + letter, add_special_tokens=False).input_ids
        extra = full[len(base):]
        if len(extra) != 1 or full[:len(base)] != base:
            extra = spec.tokenizer(letter, add_special_tokens=False).input_ids
        if len(extra) != 1:
            raise ValueError(f"{spec.name}: '{letter}' is not a single token ({full}); cannot read a choice")
        ids.append(extra[0])
    return ids[0], ids[1]


# An intervention for one batch: given the batch's prompt indices and their token lengths, a context manager
# (e.g. span steering on those rows' activity tokens) that is active during that batch's forward pass.
BatchIntervention = Callable[[list[int], list[int]], AbstractContextManager[Any]]


def last_position_logits(model: Model, prompts: Sequence[str], batch_size: int = 8,
                         intervention: BatchIntervention | None = None, progress: bool = False,
                         prefix_reuse: bool = True) -> torch.Tensor:
    """Next-token logits ``[n, vocab]`` at the last position of each prompt. The blocks run once per batch
    (length-bucketed, right-padded, through the fast path); the final norm and unembedding run for the last
    position only. ``intervention(batch, lengths)`` is entered around each batch's forward pass.

    Without an intervention, the prompts' longest shared token prefix runs once and every batch continues from
    its key/value cache (:func:`shared_prefix_logits`), unless ``prefix_reuse`` is off or
    :func:`prefix_reuse_blockers` gives a reason (then every prompt runs in full, as with an intervention,
    whose hooks address full-prompt positions)."""
    bridge, spec = model
    seqs = [spec.encode(p) for p in prompts]
    if intervention is None and prefix_reuse:
        reasons = _reuse_blockers(bridge, seqs)
        if reasons:
            log.info("prefix reuse off, running every prompt in full: %s", "; ".join(reasons))
        else:
            try:
                return shared_prefix_logits(model, seqs, batch_size, progress)
            except Exception as e:  # an optimisation only: any failure falls back to the reference path
                log.warning("prefix reuse failed, running every prompt in full: %s: %s", type(e).__name__, e)
    return _full_prompt_logits(model, seqs, batch_size, intervention, progress)


def _full_prompt_logits(model: Model, seqs: list[list[int]], batch_size: int,
                        intervention: BatchIntervention | None, progress: bool) -> torch.Tensor:
    """Every prompt run in full, batch by batch, through :func:`emolens.activations.forward_layers`."""
    import torch
    from tqdm.auto import tqdm

    from emolens.activations import forward_layers, length_batches

    bridge, spec = model
    last = spec.n_layers - 1
    out = None
    bar = tqdm(total=len(seqs), desc="choices", disable=not progress, leave=False)
    for batch in length_batches([len(s) for s in seqs], batch_size):
        grabbed: list[torch.Tensor] = []

        def on_layer(layer: int, resid: torch.Tensor, offsets: list[int], batch: list[int] = batch,
                     grabbed: list[torch.Tensor] = grabbed) -> None:
            ends = torch.tensor([offsets[r] + len(seqs[i]) - 1 for r, i in enumerate(batch)], device=resid.device)
            grabbed.append(resid[torch.arange(len(batch), device=resid.device), ends])

        ctx = intervention(batch, [len(seqs[i]) for i in batch]) if intervention else nullcontext()
        with ctx:
            forward_layers(bridge, spec, [seqs[i] for i in batch], [last], "resid_post", on_layer)
        bar.update(len(batch))
        logits = final_logits(bridge, grabbed[0])
        if out is None:
            out = torch.zeros((len(seqs), logits.shape[-1]))
        out[batch] = logits
    bar.close()
    assert out is not None
    return out


# ---- shared-prefix key/value reuse ---------------------------------------------------------------------------
# Route: the bridge's own forward hands any extra keyword straight to the HF model, its blocks pass every
# keyword on to their HF layer, and inside emolens.fastpath.hf_internals those layers' attention is HF's own,
# which writes to and reads from the cache it is given. So the prefix runs once through
# ``bridge.run_with_hooks(..., cache=DynamicCache)`` (transformers 5 calls the argument ``cache``; older
# versions ``past_key_values``), stopped by a hook after the last block like forward_layers, and each batch's
# suffixes run the same way against a copy of that cache repeated to the batch size. Without the fast path the
# bridge's re-implemented attention looks for the cache under ``past_key_values`` only, so under transformers 5
# it would silently ignore it: that case, hooks attached to the bridge (they address full-prompt positions)
# and a short prefix all run every prompt in full instead.
MIN_SHARED_PREFIX = 8  # tokens; below this one extra forward for the prefix saves too little to bother


def shared_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of ``seqs``, leaving at least one token of each outside it
    (the last position must be computed in the suffix run)."""
    import os

    if not seqs:
        return 0
    common = len(os.path.commonprefix([list(s) for s in seqs]))
    return max(0, min(common, min(len(s) for s in seqs) - 1))


_cache_keyword = cache_keyword  # a module-level name, so tests can stand in for it


def _attached_hooks(bridge: Any) -> list[str]:
    """Names of the bridge's hook points that carry forward hooks right now."""
    from transformer_lens.hook_points import HookPoint

    return [name for name, mod in bridge.named_modules() if isinstance(mod, HookPoint) and mod.fwd_hooks]


def _reuse_blockers(bridge: Any, seqs: Sequence[Sequence[int]]) -> list[str]:
    from emolens.fastpath import fast_path_blockers

    reasons = []
    n = shared_prefix_length(seqs)
    if n < MIN_SHARED_PREFIX:
        reasons.append(f"the shared prefix is {n} tokens (< {MIN_SHARED_PREFIX})")
    hooked = _attached_hooks(bridge)
    if hooked:
        reasons.append(f"hooks are attached ({', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''}); "
                       "they address full-prompt positions")
    fast = fast_path_blockers(bridge)
    if fast:
        reasons.append(f"the block-level fast path is off ({'; '.join(fast)}) and the bridge's own attention "
                       "does not read the cache transformers passes it")
    if _cache_keyword(bridge) is None:
        reasons.append("the HF model's forward takes no key/value cache")
    return reasons


def prefix_reuse_blockers(model: Model, prompts: Sequence[str]) -> list[str]:
    """Why :func:`last_position_logits` would run every one of ``prompts`` in full rather than reuse their
    shared prefix's key/value cache (empty when it will reuse it)."""
    bridge, spec = model
    return _reuse_blockers(bridge, [spec.encode(p) for p in prompts])


def _prefix_cache(bridge: Any, spec: Any, prefix: Sequence[int]) -> Any:
    """The key/value cache of ``prefix`` (batch 1), checked to hold all of it at every layer."""
    return prefix_cache(bridge, spec, prefix)


def _suffix_batch(seqs: Sequence[Sequence[int]], n_prefix: int, pad: int) -> tuple[torch.Tensor, ...]:
    """Right-padded suffix ids ``[b, S]``, the attention mask over prefix + suffix ``[b, n_prefix + S]``, the
    suffix tokens' positions ``[b, S]`` and each row's last real suffix index ``[b]``."""
    import torch

    lengths = [len(s) - n_prefix for s in seqs]
    S = max(lengths)
    ids = torch.full((len(seqs), S), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n_prefix + S), dtype=torch.long)
    mask[:, :n_prefix] = 1
    for r, s in enumerate(seqs):
        ids[r, :lengths[r]] = torch.tensor(list(s[n_prefix:]), dtype=torch.long)
        mask[r, n_prefix:n_prefix + lengths[r]] = 1
    positions = (n_prefix + torch.arange(S)).expand(len(seqs), S)  # right padding: real tokens come first
    return ids, mask, positions, torch.tensor(lengths) - 1


def shared_prefix_logits(model: Model, seqs: Sequence[Sequence[int]], batch_size: int = 8,
                         progress: bool = False) -> torch.Tensor:
    """:func:`last_position_logits` of encoded prompts ``seqs`` by key/value reuse: their longest shared token
    prefix runs once, then each length-bucketed batch runs only its right-padded suffixes against a copy of
    that cache repeated to the batch size (positions continue after the prefix; the mask covers prefix and
    suffix). Equal to running every prompt in full up to floating-point rounding. Raises when the model cannot
    take a cache (see :func:`prefix_reuse_blockers`; :func:`last_position_logits` then falls back)."""
    import torch
    from tqdm.auto import tqdm

    from emolens.activations import _pad_id, length_batches

    bridge, spec = model
    n_prefix = shared_prefix_length(seqs)
    if n_prefix < 1:
        raise ValueError("the prompts share no token prefix")
    prefix = _prefix_cache(bridge, spec, seqs[0][:n_prefix])
    pad = _pad_id(spec)
    out = None
    bar = tqdm(total=len(seqs), desc="choices", disable=not progress, leave=False)
    for batch in length_batches([len(s) for s in seqs], batch_size):
        ids, mask, positions, ends = _suffix_batch([seqs[i] for i in batch], n_prefix, pad)
        with torch.inference_mode():
            resid = last_block_output(bridge, spec, ids, mask, positions, repeated(prefix, len(batch)))
        logits = final_logits(bridge, resid[torch.arange(len(batch), device=resid.device), ends.to(resid.device)])
        if out is None:
            out = torch.zeros((len(seqs), logits.shape[-1]))
        out[batch] = logits
        bar.update(len(batch))
    bar.close()
    assert out is not None
    return out


def choice_prompt_spans(spec: Any, a: str, b: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The choice prompt and the token spans of option A's and option B's activity text inside it."""
    from emolens.interventions import token_span

    prompt = choice_prompt(spec, a, b)
    question = CHOICE_QUESTION.format(a=a, b=b)
    q0 = prompt.index(question)
    a0 = q0 + CHOICE_QUESTION.index("{a}")
    b0 = q0 + CHOICE_QUESTION.format(a=a, b="{b}").index("{b}")
    return prompt, token_span(spec, prompt, a0, a0 + len(a)), token_span(spec, prompt, b0, b0 + len(b))


def _layers_digest(arrays: dict[int, Any]) -> str:
    """A short content hash of per-layer arrays (as float32, in layer order), for cache keys."""
    import hashlib

    digest = hashlib.sha256()
    for layer in sorted(arrays):
        digest.update(np.asarray(arrays[layer], np.float32).tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ChoiceSteer:
    """Steering during a tournament: ``alpha`` x the typical residual norm of each layer along that layer's
    direction, added on the tokens of every activity in ``focal`` wherever it appears in a choice prompt
    (the paper steers the steered activities' token positions). Built by :func:`emotion_steer` or by hand."""

    directions: dict[int, Any]  # layer -> [d]
    norms: dict[int, float]  # layer -> typical residual norm
    alpha: float
    focal: frozenset[int]
    label: str = ""

    def key(self) -> dict[str, Any]:
        """Everything that changes the steered numbers, for cache keys (directions by content hash)."""
        return {"layers": sorted(self.directions), "alpha": float(self.alpha), "focal": sorted(self.focal),
                "norms": {str(k): float(v) for k, v in sorted(self.norms.items())},
                "directions": _layers_digest(self.directions)}


def emotion_steer(vectors: Any, emotion: str | None, layers: Sequence[int], alpha: float, focal: Sequence[int],
                  direction: Any = None) -> ChoiceSteer:
    """A :class:`ChoiceSteer` along ``emotion``'s vector at each layer (or along one fixed ``direction``, e.g. a
    random control, at every layer), with the vectors' residual norms as the unit of ``alpha``."""
    layers = [vectors.layers[vectors.layer_index(la)] for la in layers]
    if direction is None:
        if emotion is None:
            raise ValueError("give an emotion or a direction")
        dirs = {la: vectors.vector(emotion, la).numpy() for la in layers}
    else:
        dirs = {la: np.asarray(direction, np.float32) for la in layers}
    return ChoiceSteer(dirs, {la: vectors.residual_norm(la) for la in layers}, float(alpha),
                       frozenset(int(f) for f in focal), emotion or "direction")


@dataclass(frozen=True)
class ChoiceAblation:
    """Directional ablation during a tournament: at each layer, the residual's component in the span of that
    layer's rows ``[k, d]`` is removed at every token of every prompt (:func:`emolens.patching.ablation_by_layer`)."""

    bases: dict[int, Any]  # layer -> [k, d] (or [d])
    label: str = ""

    def key(self) -> dict[str, Any]:
        """Everything that changes the ablated numbers, for cache keys (bases by content hash)."""
        return {"layers": sorted(self.bases), "dims": {str(k): int(np.atleast_2d(np.asarray(v)).shape[0])
                                                      for k, v in sorted(self.bases.items())},
                "bases": _layers_digest(self.bases)}

    def tensors(self) -> dict[int, Any]:
        """The bases as float32 tensors, as the ablation hooks take them."""
        import torch

        return {la: torch.as_tensor(np.asarray(b, np.float32)) for la, b in self.bases.items()}


def _combined(model: Model, steer_part: BatchIntervention | None, ablate: ChoiceAblation | None) -> BatchIntervention | None:
    """One batch intervention from span steering and/or a whole-prompt ablation (ablation hooks go on first)."""

    from emolens.patching import ablation_by_layer

    if ablate is None:
        return steer_part
    bridge, spec = model
    bases = ablate.tensors()

    @contextmanager
    def enter(batch: list[int], lengths: list[int]) -> Iterator[None]:
        with ablation_by_layer(bridge, spec, bases), (steer_part(batch, lengths) if steer_part else nullcontext()):
            yield
    return enter


def _steer_intervention(model: Model, steer: ChoiceSteer, spans: list[list[tuple[int, int]]]) -> BatchIntervention:
    """Per batch, span steering on the focal activities' tokens of each prompt in the batch."""
    import torch

    from emolens.interventions import span_steering

    bridge, spec = model
    layers = sorted(steer.directions)
    dirs = {la: torch.as_tensor(steer.directions[la]) for la in layers}

    def enter(batch: list[int], lengths: list[int]) -> AbstractContextManager[Any]:
        return span_steering(bridge, spec, dirs, layers, steer.alpha, steer.norms, [spans[i] for i in batch],
                             lengths)
    return enter


def choice_probabilities(model: Model, activities: Sequence[str], pairs: Sequence[tuple[int, int]],
                         batch_size: int = 8, steer: ChoiceSteer | None = None, progress: bool = False,
                         ablate: ChoiceAblation | None = None, prefix_reuse: bool = True) -> np.ndarray:
    """P(first option) for each ordered pair (i, j), renormalised over the two letters; with ``steer``, the
    focal activities' tokens are steered in every prompt they appear in; with ``ablate``, its subspaces are
    projected out of every token. ``prefix_reuse``: see :func:`last_position_logits` (interventions never
    reuse; turn it off for a clean baseline that must match intervened runs to the last bit)."""
    import torch

    bridge, spec = model
    a_id, b_id = letter_ids(spec)
    built = [choice_prompt_spans(spec, activities[i], activities[j]) for i, j in pairs]
    prompts = [b[0] for b in built]
    intervention = None
    if steer is not None:
        bad = [f for f in steer.focal if not 0 <= f < len(activities)]
        if bad:
            raise ValueError(f"focal activities {bad} are out of range for {len(activities)} activities")
        spans = [[sp for k, sp in zip((i, j), b[1:]) if k in steer.focal] for (i, j), b in zip(pairs, built)]
        intervention = _steer_intervention(model, steer, spans)
    logits = last_position_logits(model, prompts, batch_size, _combined(model, intervention, ablate), progress,
                                  prefix_reuse)
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
                   batch_size: int = 8, steer: ChoiceSteer | None = None) -> Tournament:
    """A tournament computed now (no cache); :func:`tournament` is the cached, checkpointed version."""
    pairs = list(pairs) if pairs is not None else all_pairs(len(activities))
    return Tournament(len(activities), pairs, choice_probabilities(model, activities, pairs, batch_size, steer))


TOURNAMENT_VERSION = 1  # bump when a change alters choice probabilities, so old caches are not reused


def tournament(model: Model, activities: Sequence[str], pairs: Sequence[tuple[int, int]] | None = None,
               steer: ChoiceSteer | None = None, batch_size: int = 16, chunk_size: int = 256,
               progress: bool = True, folder: Any = None, refresh: bool = False,
               ablate: ChoiceAblation | None = None, prefix_reuse: bool = True) -> Tournament:
    """The forced-choice tournament over ``pairs`` (all ordered pairs by default), cached by content hash of
    the model, its weights and dtype, the prompt wording, the activities, the pairs and the steering; long runs
    checkpoint every ``chunk_size`` pairs, so an interrupted run resumes where it stopped. ``prefix_reuse``
    as in :func:`choice_probabilities`."""
    import torch

    from emolens.activations import checkpointed
    from emolens.cache import cached, content_hash
    from emolens.paths import cache_dir

    _, spec = model
    pairs = list(pairs) if pairs is not None else all_pairs(len(activities))
    if not pairs:
        raise ValueError("no pairs to score")
    key = {"model": spec.name, "weights": spec.weight_sha256 or spec.weight_source, "dtype": spec.dtype,
           "version": TOURNAMENT_VERSION, "question": CHOICE_QUESTION, "prefill": PREFILL,
           "activities": content_hash(list(activities)), "pairs": content_hash(pairs),
           "steer": steer.key() if steer is not None else None}
    if ablate is not None:  # only then, so the caches of unablated tournaments keep their keys
        key["ablate"] = ablate.key()
    if not prefix_reuse and steer is None and ablate is None:  # a full-path baseline is never a reused one
        key["prefix_reuse"] = False
    from pathlib import Path

    root = Path(folder or cache_dir() / "tournaments")
    n_chunks = -(-len(pairs) // chunk_size)
    ck_key = dict(key, chunk_size=chunk_size, n_chunks=n_chunks)

    def compute() -> tuple[dict[str, Any], dict[str, Any]]:
        def one(c: int) -> dict[str, Any]:
            part = pairs[c * chunk_size:(c + 1) * chunk_size]
            p = choice_probabilities(model, activities, part, batch_size, steer, progress=progress and n_chunks == 1,
                                     ablate=ablate, prefix_reuse=prefix_reuse)
            return {"p_first": torch.as_tensor(p, dtype=torch.float64)}

        parts = checkpointed(n_chunks, root / "checkpoints", ck_key, one, progress)
        return {"p_first": torch.cat([p["p_first"] for p in parts])}, {"n_pairs": len(pairs)}

    def check(t: dict[str, Any], meta: dict[str, Any]) -> None:
        if tuple(t["p_first"].shape) != (len(pairs),):
            raise ValueError("cached tournament has the wrong number of pairs")

    t, _ = cached("tournaments", key, compute, folder=root, refresh=refresh, check=check)
    for stale in (root / "checkpoints").glob(f"{content_hash(ck_key)}-chunk*"):
        stale.unlink()
    return Tournament(len(activities), pairs, t["p_first"].numpy())


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


def balanced_stories(stories: Sequence[Any], per_emotion: int) -> list[Any]:
    """``per_emotion`` stories of each emotion, spread over writers and narrative channels: each pick prefers a
    story whose writer and channel are both new for that emotion, then one with a new writer, then any; among
    those, the writer used least so far over all emotions, then slot order. Deterministic, and blind to the
    texts (no tuning on what the stories say)."""
    from collections import Counter, defaultdict

    used: Counter[str] = Counter()

    if per_emotion < 1:
        raise ValueError(f"per_emotion must be >= 1, got {per_emotion}")
    by_emotion: dict[str, list[Any]] = defaultdict(list)
    for s in stories:
        by_emotion[s.emotion].append(s)
    kept = []
    for pool in by_emotion.values():
        pool = sorted(pool, key=lambda s: s.slot)
        chosen: list[Any] = []
        while len(chosen) < min(per_emotion, len(pool)):
            writers = {s.author for s in chosen}
            channels = {s.channel for s in chosen}
            rest = sorted((s for s in pool if s not in chosen), key=lambda s: (used[s.author], s.slot))
            pick = next((s for s in rest if s.author not in writers and s.channel not in channels), None) or \
                next((s for s in rest if s.author not in writers), None) or rest[0]
            chosen.append(pick)
            used[pick.author] += 1
        kept.extend(sorted(chosen, key=lambda s: s.slot))
    return kept


def subsample_vectors(model: Model, per_emotion: int, layers: Sequence[int], neutral_limit: int | None,
                      corpus: str = "v2", progress: bool = True) -> Any:
    """Emotion vectors of all emotions from a balanced subsample of the crossed v2 stories
    (:func:`balanced_stories`), for models too slow for the whole corpus; activations cached as extraction's."""
    from emolens.data import load_emotions, load_stories
    from emolens.vectors import emotion_vectors, neutral_texts

    bridge, spec = model
    stories = balanced_stories([s for s in load_stories(corpus=corpus) if s.channel is not None], per_emotion)
    order = [e.emotion for e in load_emotions()]
    neutral = neutral_texts(spec, neutral_limit, version="v2")
    ev = emotion_vectors(bridge, spec, [s.text for s in stories], [s.emotion for s in stories], neutral,
                         emotions=[e for e in order if any(s.emotion == e for s in stories)], layers=list(layers),
                         progress=progress, corpus_id=f"{corpus}-balanced-{per_emotion}")
    ev.settings["stories_per_emotion"] = per_emotion
    return ev


# ---- the sparse design: which k is enough -----------------------------------------------------------------
def restrict(t: Tournament, pairs: Sequence[tuple[int, int]]) -> Tournament:
    """The sub-tournament of ``t`` on ``pairs`` (each must have been scored in ``t``)."""
    idx = {p: k for k, p in enumerate(t.pairs)}
    missing = [p for p in pairs if p not in idx]
    if missing:
        raise ValueError(f"{len(missing)} pairs were not scored in this tournament, e.g. {missing[0]}")
    return Tournament(t.n, list(pairs), t.p_first[[idx[p] for p in pairs]])


def sparse_k_curve(full: Tournament, ks: Sequence[int], seeds: int = 10,
                   threshold: float = 0.95) -> dict[str, Any]:
    """How well sparse designs reproduce the full tournament's ratings: for each k, ``seeds`` random designs
    (each item against k opponents, both orders) cut from ``full``, each fitted by Bradley-Terry and compared
    with the full fit by Spearman rank correlation. ``k`` is the smallest k whose *worst* design reaches
    ``threshold`` (None if none does)."""
    from scipy.stats import spearmanr

    if any(not 1 <= k < full.n for k in ks):
        raise ValueError(f"every k must be in 1..{full.n - 1}, got {list(ks)}")
    reference = bradley_terry(full.n, full.outcomes())
    rho = np.zeros((len(ks), seeds))
    for a, k in enumerate(ks):
        for s in range(seeds):
            sub = restrict(full, sparse_pairs(full.n, k, seed=s))
            rho[a, s] = spearmanr(bradley_terry(full.n, sub.outcomes()), reference).statistic
    worst = rho.min(axis=1)
    ok = [k for k, w in zip(ks, worst) if w >= threshold]
    return {"ks": list(ks), "rho": rho, "rho_mean": rho.mean(axis=1), "rho_min": worst, "threshold": threshold,
            "k": min(ok) if ok else None, "n_pairs": [len(sparse_pairs(full.n, k, 0)) for k in ks]}


# ---- probe readouts on the activities vs preference ----------------------------------------------------------
FEEL_QUESTION = "How would you feel about {activity}?"  # the paper's probe prompt (Figure 4), as a user turn


def feel_prompt(spec: Any, activity: str) -> tuple[str, tuple[int, int]]:
    """The probe prompt for one activity (ends at the Assistant's turn) and the activity's token span in it.
    The activity is lower-cased at its first letter so it reads as part of the question."""
    from emolens.interventions import text_span

    text = activity[:1].lower() + activity[1:]
    prompt = spec.format_user_prompt(FEEL_QUESTION.format(activity=text))
    return prompt, text_span(spec, prompt, text)


def activity_activations(model: Model, activities: Sequence[str], layer: int, batch_size: int = 8) -> Any:
    """Mean residual ``[n, d]`` (float32) at ``layer`` over each activity's own tokens in its probe prompt."""
    import torch

    from emolens.activations import forward_layers, length_batches

    bridge, spec = model
    built = [feel_prompt(spec, a) for a in activities]
    seqs = [spec.encode(p) for p, _ in built]
    out = torch.zeros((len(activities), spec.d_model))
    for batch in length_batches([len(s) for s in seqs], batch_size):
        def on_layer(_: int, resid: Any, offsets: list[int], batch: list[int] = batch) -> None:
            for r, i in enumerate(batch):
                s, e = built[i][1]
                out[i] = resid[r, offsets[r] + s:offsets[r] + e].float().mean(0).cpu()

        forward_layers(bridge, spec, [seqs[i] for i in batch], [layer], "resid_post", on_layer)
    return out


def _rowwise_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``x [n, m]`` with ``y [n]`` (or of ``x`` with each column of ``y [n, b]``)."""
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    if yc.ndim == 1:
        return (xc * yc[:, None]).sum(0) / np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum())
    return (xc * yc).sum(0) / np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum(0))


def probe_preference(readouts: np.ndarray, ratings: np.ndarray, null_readouts: np.ndarray | None = None,
                     n_boot: int = 1000, n_perm: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Per emotion, the Pearson r across activities of its readout ``readouts[:, e]`` with the ratings, with a
    bootstrap CI over activities and a permutation p-value (ratings shuffled across activities, two-sided).
    ``null_readouts [n, R]`` (random directions read the same way) give a second null: the distribution of r
    for directions with no emotion in them. ``max_abs_null`` is the shuffled-ratings null of the largest |r|
    over all emotions, for judging the extremes of the sorted bars."""
    from emolens.stats import permutation_p

    x = np.asarray(readouts, float)
    y = np.asarray(ratings, float)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"readouts {x.shape} and ratings {y.shape} do not match: need [n, E] and [n]")
    if x.shape[0] < 4:
        raise ValueError("need at least 4 activities to correlate")
    rng = np.random.default_rng(seed)
    r = _rowwise_r(x, y)
    boots = np.array([_rowwise_r(x[i], y[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(n_boot))])
    a = (1 - level) / 2
    lo, hi = np.nanquantile(boots, [a, 1 - a], axis=0)
    perms = np.array([_rowwise_r(x, rng.permutation(y)) for _ in range(n_perm)])  # [n_perm, E]
    p = np.array([permutation_p(perms[:, e], r[e], two_sided=True) for e in range(x.shape[1])])
    out = {"r": r, "low": lo, "high": hi, "p": p, "max_abs_null": np.abs(perms).max(axis=1)}
    if null_readouts is not None:
        out["random_r"] = _rowwise_r(np.asarray(null_readouts, float), y)
    return out


def direction_readouts(vectors: Any, pooled: Any, layer: int, directions: np.ndarray) -> np.ndarray:
    """Readouts ``[n, R]`` of arbitrary unit ``directions [R, d]`` on pooled activations, read exactly as the
    emotion vectors are (minus the vectors' centre, neutral PCs projected out, cosine): the random-direction null."""
    from emolens.stats import cosine
    from emolens.vectors import project_out

    j = vectors.layer_index(layer)
    x = project_out(pooled.float() - vectors.centre[j], vectors.neutral_pcs[j])
    return cosine(x, np.asarray(directions))


# ---- steering shifts: how far steering an activity's tokens moves its rating -----------------------------------
ELO_PER_LOGIT = 400 / np.log(10)  # Bradley-Terry natural-log strengths -> Elo points


def split_activities(n: int, seed: int) -> tuple[list[int], list[int]]:
    """A random half of ``n`` items to steer and the other half as the fixed control opponents."""
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[:n // 2]), sorted(int(i) for i in order[n // 2:])


def steering_pairs(steered: Sequence[int], control: Sequence[int], k: int, seed: int = 0) -> list[tuple[int, int]]:
    """Each steered item against ``k`` random control opponents, every pair in both orders. Opponents are never
    steered, so a steered item's games measure its own shift against fixed ratings."""
    if set(steered) & set(control):
        raise ValueError("steered and control activities overlap")
    if not 1 <= k <= len(control):
        raise ValueError(f"k must be in 1..{len(control)}, got {k}")
    rng = np.random.default_rng(seed)
    out = []
    for i in steered:
        for j in rng.choice(list(control), size=k, replace=False):
            out += [(int(i), int(j)), (int(j), int(i))]
    return out


def focal_strengths(t: Tournament, focal: Sequence[int], fixed: np.ndarray) -> np.ndarray:
    """For each focal item, its Bradley-Terry strength fitted alone by maximum likelihood against opponents held
    at the ``fixed`` strengths (from the full tournament), from its order-debiased soft outcomes in ``t``."""
    from scipy.optimize import minimize_scalar

    games: dict[int, list[tuple[float, float]]] = {f: [] for f in focal}
    for i, j, p in t.outcomes():
        if i in games and j not in games:
            games[i].append((fixed[j], p))
        elif j in games and i not in games:
            games[j].append((fixed[i], 1 - p))
    out = []
    for f in focal:
        if not games[f]:
            raise ValueError(f"item {f} has no game against a non-focal opponent")
        opp, p = np.array(games[f]).T

        def nll(x: float, opp: np.ndarray = opp, p: np.ndarray = p) -> float:
            d = x - opp
            return float(np.sum(np.logaddexp(0, d) - p * d))
        out.append(minimize_scalar(nll, bounds=(-30, 30), method="bounded", options={"xatol": 1e-6}).x)
    return np.array(out)


def rating_shift(model: Model, activities: Sequence[str], fixed: np.ndarray, steered: Sequence[int],
                 pairs: Sequence[tuple[int, int]], steer: ChoiceSteer | None, batch_size: int = 16) -> np.ndarray:
    """Elo-point shift of each steered activity: its strength fitted from the steered games minus the same fit
    from the same games unsteered (both tournaments cached), so design noise cancels and alpha = 0 gives 0."""
    # the steered games run every prompt in full, so the unsteered ones do too: no path rounding in the shift
    clean = tournament(model, activities, pairs, None, batch_size, progress=False, prefix_reuse=False)
    if steer is None:
        return np.zeros(len(steered))
    hit = tournament(model, activities, pairs, steer, batch_size, progress=False)
    return (focal_strengths(hit, steered, fixed) - focal_strengths(clean, steered, fixed)) * ELO_PER_LOGIT


def cost_dialogues(spec: Any, n: int, skip: int = 1300) -> tuple[list[str], list[tuple[int, int]]]:
    """Held-out neutral dialogues for the cost of an intervention (v2 dialogues from ``skip`` on, which no vector
    here was built from: the recipe reads the first ones) and the token span of each one's first user message,
    where span steering is applied to measure its damage."""
    from emolens.data.sets import load_neutral_dialogues
    from emolens.interventions import text_span

    dialogues = load_neutral_dialogues(version="v2")[skip:skip + n]
    if len(dialogues) < n:
        raise ValueError(f"only {len(dialogues)} neutral dialogues after index {skip}")
    texts = [spec.format_chat(d.messages()) for d in dialogues]
    return texts, [text_span(spec, t, d.turns[0][1]) for t, d in zip(texts, dialogues)]


def steer_cost(model: Model, steer: ChoiceSteer, texts: Sequence[str], spans: Sequence[tuple[int, int]],
               span_only: bool = True) -> dict[str, float]:
    """The damage of ``steer``'s direction and strength on neutral dialogues (cached): steering their first user
    message's tokens (``span_only``, as the activity's tokens are steered) or every token; KL per token and
    the perplexity ratio over the whole dialogues (see :func:`emolens.interventions.intervention_cost`)."""
    import torch

    from emolens.cache import cached, content_hash
    from emolens.interventions import span_cost, span_steering

    bridge, spec = model
    layers = sorted(steer.directions)
    dirs = {la: torch.as_tensor(steer.directions[la]) for la in layers}
    key = {"model": spec.name, "weights": spec.weight_sha256 or spec.weight_source, "dtype": spec.dtype,
           "steer": dict(steer.key(), focal=[]), "texts": content_hash(list(texts)), "spans": [list(s) for s in spans],
           "span_only": span_only, "version": 1}

    def compute() -> tuple[dict[str, Any], dict[str, Any]]:
        def ctx(sp: tuple[int, int]) -> Any:
            return span_steering(bridge, spec, dirs, layers, steer.alpha, steer.norms, [[sp if span_only else (0, None)]])
        c = span_cost(bridge, spec, texts, spans, ctx)
        return {"cost": torch.tensor([c["kl_per_token"], c["perplexity_ratio"], c["tokens"]], dtype=torch.float64)}, {}

    t, _ = cached("steer_cost", key, compute)
    kl, ppl, n = t["cost"].tolist()
    return {"kl_per_token": kl, "perplexity_ratio": ppl, "tokens": int(n)}


def mean_ci(x: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of ``x`` with a bootstrap CI over its entries (here: the steered activities)."""
    from scipy.stats import bootstrap

    x = np.asarray(x, float)
    if np.ptp(x) == 0:
        return {"value": float(x.mean()), "low": float(x.mean()), "high": float(x.mean())}
    ci = bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                   random_state=seed).confidence_interval
    return {"value": float(x.mean()), "low": float(ci.low), "high": float(ci.high)}


def steering_sweep(model: Model, vectors: Any, activities: Sequence[str], fixed: np.ndarray,
                   conditions: dict[str, tuple[str | None, Any]], layers: Sequence[int], alpha: float,
                   splits: Sequence[int], k: int, cost_texts: tuple[list[str], list[tuple[int, int]]],
                   batch_size: int = 16, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Rating shifts for each condition ``name -> (emotion, None)`` or ``name -> (None, direction)`` (a random
    control), on the steered half of each split (one seed per split), with each condition's cost beside it.
    Per condition: the per-activity shifts, their mean with a CI over steered activities, and the cost."""
    from tqdm.auto import tqdm

    out: dict[str, dict[str, Any]] = {}
    for name, (emotion, direction) in tqdm(conditions.items(), desc="steering conditions", disable=not progress):
        shifts = []
        for seed in splits:
            steered, control = split_activities(len(activities), seed)
            pairs = steering_pairs(steered, control, k, seed)
            steer = emotion_steer(vectors, emotion, layers, alpha, steered, direction)
            shifts.append(rating_shift(model, activities, fixed, steered, pairs, steer, batch_size))
        s = np.concatenate(shifts)
        out[name] = {"shifts": s, "mean": mean_ci(s), "cost": steer_cost(model, steer, *cost_texts)}
    return out


def probe_vs_shift(probe_r: np.ndarray, shifts: np.ndarray, n_perm: int = 10000, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """Across emotions: Pearson r of each emotion's probe-rating correlation with its mean steering shift
    (paper 0.85), with a bootstrap CI over emotions and a permutation p-value (shifts shuffled, two-sided)."""
    return correlation(probe_r, shifts, n_perm, n_boot, seed)


def correlation(x: Any, y: Any, n_perm: int = 10000, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Pearson r of two paired vectors with a bootstrap CI over the pairs and a two-sided permutation p-value."""
    from emolens.stats import permutation_p

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 4:
        raise ValueError("need two equal-length vectors of at least 4 values")
    rng = np.random.default_rng(seed)
    r = float(np.corrcoef(x, y)[0, 1])
    boots = [np.corrcoef(x[i], y[i])[0, 1] for i in (rng.integers(0, len(x), len(x)) for _ in range(n_boot))]
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    null = [np.corrcoef(x, rng.permutation(y))[0, 1] for _ in range(n_perm)]
    return {"value": r, "low": float(lo), "high": float(hi), "p": permutation_p(null, r, two_sided=True),
            "n": int(len(x))}


def spanning_emotions(names: Sequence[str], r: np.ndarray, n: int) -> list[str]:
    """``n`` emotions chosen by rule to span the probe-rating correlation range: evenly spaced ranks of r
    (the most negative and the most positive always included)."""
    if not 2 <= n <= len(names):
        raise ValueError(f"n must be in 2..{len(names)}, got {n}")
    order = np.argsort(r)
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, n)).astype(int))
    return [names[order[p]] for p in picks]


# ---- continuation steering: does steering an emotion make its word more likely? ----------------------------------
# Our wording of the paper's continuation probes (Figures 52-53): the Assistant's reply is prefilled so that the
# next token is a feeling word.
CONTINUATION_PROMPTS = (
    ("How are you feeling right now? Answer in one word.", "I feel"),
    ("Describe your mood at this moment with a single word.", "Right now I am feeling"),
    ("What is the main character feeling in the story you are about to write? One word.", "He feels"),
)


def word_token(spec: Any, word: str) -> int:
    """The first token of `` word`` as it would follow a prefill ending in a word."""
    return spec.tokenizer(" " + word, add_special_tokens=False).input_ids[0]


def continuation_logprobs(model: Model, vectors: Any, words: Sequence[str], steer_with: Sequence[str],
                          layers: Sequence[int], alpha: float, span: str = "reply") -> dict[str, Any]:
    """Change in the log-probability of each word's first token as the next token of the continuation prompts,
    when steering with each emotion of ``steer_with`` on the ``span`` ("reply": the prefilled Assistant
    tokens; "all"; "prompt"): ``delta[s, w]`` averaged over the prompts."""
    import torch

    from emolens.interventions import named_span, span_steering

    bridge, spec = model
    layers = [vectors.layers[vectors.layer_index(la)] for la in layers]
    prompts, spans = [], []
    for user, prefill in CONTINUATION_PROMPTS:
        head = spec.format_user_prompt(user)
        prompts.append(head + prefill)
        sp = named_span(spec, head, prefill, span)
        spans.append([(sp[0], sp[1] if sp[1] is not None else len(spec.encode(head + prefill)))])
    ids = [word_token(spec, w) for w in words]

    def logp(intervention: Any) -> np.ndarray:
        # clean and steered take the same (full) path, so no rounding difference between paths reads as an effect
        logits = last_position_logits(model, prompts, len(prompts), intervention, prefix_reuse=False)
        return torch.log_softmax(logits, -1)[:, ids].mean(0).numpy()

    clean = logp(None)
    delta = np.zeros((len(steer_with), len(words)))
    for a, emo in enumerate(steer_with):
        dirs = {la: vectors.vector(emo, la) for la in layers}
        norms = {la: vectors.residual_norm(la) for la in layers}
        delta[a] = logp(lambda b, lens, d=dirs, n=norms: span_steering(bridge, spec, d, layers, alpha, n,
                                                                       [spans[i] for i in b], lens)) - clean
    return {"delta": delta, "clean": clean, "words": list(words), "steer_with": list(steer_with)}


def matching_effect(delta: np.ndarray, n_perm: int = 10000, seed: int = 0) -> dict[str, float]:
    """For a square ``delta [emotion steered, emotion word]``: mean change of the matching word (diagonal)
    minus the mean of the others, against a null that shuffles which word goes with which steered emotion."""
    from emolens.stats import permutation_p

    d = np.asarray(delta, float)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] < 3:
        raise ValueError("delta must be square, with at least 3 emotions")
    n = d.shape[0]

    def stat(m: np.ndarray) -> float:
        diag = np.trace(m) / n
        return float(diag - (m.sum() - np.trace(m)) / (n * n - n))
    rng = np.random.default_rng(seed)
    obs = stat(d)
    null = [stat(d[:, rng.permutation(n)]) for _ in range(n_perm)]
    return {"value": obs, "p": permutation_p(null, obs), "null_95": float(np.quantile(null, 0.95)),
            "matching_mean": float(np.trace(d) / n)}


def activity_subset(activities: Sequence[Any], per_category: int | None) -> list[Any]:
    """The first ``per_category`` activities of each category in file order (all when None): a rule fixed
    before any result, for models too slow for the full 64 x 63 tournament."""
    if per_category is None:
        return list(activities)
    seen: dict[str, int] = {}
    out = []
    for a in activities:
        if seen.get(a.category, 0) < per_category:
            out.append(a)
            seen[a.category] = seen.get(a.category, 0) + 1
    return out


# ---- summaries the notebook reports ------------------------------------------------------------------------------
def ratings_summary(t: Tournament, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Bradley-Terry ratings of a tournament in Elo points (1500-centred) with bootstrap CIs over pairs, the
    paper's sequential Elo beside them (and their rank agreement), and the first-option rate."""
    from scipy.stats import spearmanr

    outcomes = t.outcomes()
    theta = bradley_terry(t.n, outcomes)
    lo, hi = rating_ci(t.n, outcomes, n_boot, seed=seed)
    seq = elo(t.n, outcomes, seed=seed)
    return {"theta": theta, "rating": to_elo_scale(theta), "low": to_elo_scale(lo), "high": to_elo_scale(hi),
            "paper_elo": seq, "bt_vs_elo_spearman": float(spearmanr(theta, seq).statistic),
            "first_option_rate": t.first_option_rate(), "n_pairs": len(t.pairs)}


def category_means(values: Any, categories: Sequence[str], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``values`` per category with a bootstrap CI over the category's items, in first-seen order."""
    v = np.asarray(values, float)
    out = {}
    for c in dict.fromkeys(categories):
        out[c] = mean_ci(v[[k for k, x in enumerate(categories) if x == c]], n_boot, seed=seed)
    return out


def paper_category_agreement(ratings: Any, categories: Sequence[str], paper_rows: Sequence[tuple[str, int, int]],
                             column: int = 1) -> dict[str, Any]:
    """Spearman correlation of our mean rating per activity category with the paper's (``column`` 1: the
    post-trained model's Elo, 2: the base model's), and its exact permutation p-value over every assignment of
    our category means to the paper's categories (8! = 40,320: one-sided, agreement). Categories are the unit:
    our activities are our own wordings, so only the categories correspond."""
    import itertools

    from scipy.stats import rankdata

    v = np.asarray(ratings, float)
    cats = list(dict.fromkeys(categories))
    ours = np.array([v[[k for k, c in enumerate(categories) if c == cat]].mean() for cat in cats])
    theirs_by = {c: [] for c in cats}
    for row in paper_rows:
        if row[0] in theirs_by:
            theirs_by[row[0]].append(row[column])
    if any(not x for x in theirs_by.values()):
        raise ValueError(f"the paper's table lacks categories {[c for c, x in theirs_by.items() if not x]}")
    theirs = np.array([np.mean(theirs_by[c]) for c in cats])
    a, b = rankdata(ours), rankdata(theirs)
    rho = float(np.corrcoef(a, b)[0, 1])
    if len(cats) > 9:
        raise ValueError(f"exact permutation over {len(cats)} categories is too large")
    null = np.array([np.corrcoef(a[list(p)], b)[0, 1] for p in itertools.permutations(range(len(cats)))])
    return {"categories": cats, "ours": ours, "paper": theirs, "spearman": rho,
            "p": float(np.mean(null >= rho - 1e-12)), "n_permutations": len(null)}


def valence_relation(emotions: Sequence[str], probe_r: Any, n_perm: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Across emotions with a human valence rating (Warriner et al., matched as in notebook 04): correlation of
    each emotion's probe-preference r with its valence (the paper: 0.76 with LLM-judged valence, Figure 56)."""
    from emolens.data.ratings import match_ratings

    matched = match_ratings(list(emotions))
    keep = [k for k, e in enumerate(emotions) if e in matched]
    val = np.array([matched[emotions[k]].valence for k in keep])
    r = np.asarray(probe_r, float)[keep]
    return {"emotions": [emotions[k] for k in keep], "valence": val, "probe_r": r,
            "r": correlation(val, r, n_perm, seed=seed)}


def good_vs_bad(ratings: Any, categories: Sequence[str], good: Sequence[str] = ("helpful", "engaging"),
                bad: Sequence[str] = ("unsafe", "misaligned")) -> dict[str, Any]:
    """How well the ratings separate clearly good from clearly bad activities: d' (difference of means over
    the pooled standard deviation) and the AUC (probability a good activity outrates a bad one)."""
    from sklearn.metrics import roc_auc_score

    v = np.asarray(ratings, float)
    g = np.array([v[k] for k, c in enumerate(categories) if c in good])
    b = np.array([v[k] for k, c in enumerate(categories) if c in bad])
    if len(g) < 2 or len(b) < 2:
        raise ValueError("need at least two good and two bad activities")
    d = (g.mean() - b.mean()) / np.sqrt((g.var(ddof=1) + b.var(ddof=1)) / 2)
    auc = roc_auc_score(np.r_[np.ones(len(g)), np.zeros(len(b))], np.r_[g, b])
    return {"d_prime": float(d), "auc": float(auc), "good": list(good), "bad": list(bad)}


def verdict(estimate: dict[str, Any], paper_value: float) -> str:
    """"reproduced" when the estimate has the paper's sign and its CI excludes zero; "partly" when it has the
    sign but the CI includes zero; "not reproduced" otherwise (also when it is missing)."""
    if not estimate or estimate.get("value") is None or not np.isfinite(estimate["value"]):
        return "not reproduced (not measured)"
    v, lo, hi = estimate["value"], estimate.get("low", np.nan), estimate.get("high", np.nan)
    if np.sign(v) != np.sign(paper_value):
        return "not reproduced"
    return "reproduced" if (lo > 0 if paper_value > 0 else hi < 0) else "partly (right sign, CI includes 0)"


def verdict_p(value: float, p: float, level: float = 0.05) -> str:
    """Verdict for an effect the paper reports as positive and we test against a permutation null."""
    if value > 0 and p < level:
        return "reproduced"
    return "partly (right sign, not beyond the null)" if value > 0 else "not reproduced"


def findings_text(results: dict[str, Any]) -> str:
    """One model's findings as a README bullet, every number read from its ``05_results.json``."""
    def ci(d: dict[str, Any], digits: int = 2) -> str:
        return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"

    r = results
    pp, st, rel = r["probe_preference"], r["steering"], r["probe_r_vs_steer_shift"]
    bh = pp.get("blissful_hostile", {})
    probes = "; ".join(f"{e} r = {ci(v)}" for e, v in bh.items())
    shifts = "; ".join(f"{e} {ci(v, 0)} Elo" for e, v in st.get("blissful_hostile_shift", {}).items())
    order = np.argsort(pp["r"])
    top, bottom = int(order[-1]), int(order[0])
    ppl = [c["perplexity_ratio"] for c in st["cost"].values()]
    text = (
        f"- **{r['model']}** ({r['dtype']}; {r['n_activities']} activities, vectors from {r['vectors']['n_stories']} "
        f"stories of {r['vectors']['corpus']}): good vs bad activities d' = {r['good_vs_bad']['d_prime']:.2f} "
        f"(AUC {r['good_vs_bad']['auc']:.2f}), first-option rate {r['tournament']['first_option_rate']:.2f}"
        + (f"; category means vs the paper's post-trained Elo (Table 9), Spearman "
           f"{r['category_vs_paper']['post_trained']['spearman']:.2f} over 8 categories (exact permutation p = "
           f"{r['category_vs_paper']['post_trained']['p']:.3g})" if "category_vs_paper" in r else "") + ". "
        f"Probe on the activity tokens vs rating: most positive {pp['emotions'][top]} r = {pp['r'][top]:.2f} "
        f"[{pp['low'][top]:.2f}, {pp['high'][top]:.2f}], most negative {pp['emotions'][bottom]} r = "
        f"{pp['r'][bottom]:.2f} [{pp['low'][bottom]:.2f}, {pp['high'][bottom]:.2f}] (shuffled-ratings max |r| "
        f"{pp['max_abs_null_95']:.2f} at its 95th percentile; random directions {pp['random_abs_r_95']:.2f})"
        + (f"; {probes}" if probes else "") + ". "
        f"Steering alpha {st['alpha']} on the activity tokens at layer(s) {st['layers']}"
        + (f", {len(st['splits'])} random steered/control splits" if len(st.get("splits", [])) > 1 else "") + ": "
        f"{st['emotions_beyond_random']} of {len(st['emotions'])} emotions shift the rating beyond the "
        f"{st['n_random']} random directions' range [{st['random_range_95'][0]:.0f}, {st['random_range_95'][1]:.0f}] "
        f"Elo" + (f" ({shifts})" if shifts else "") + f", at a neutral perplexity ratio of {min(ppl):.2f}-{max(ppl):.2f}; "
        f"probe r vs steering shift across emotions r = {ci(rel)}, p = {rel['p']:.3g} (paper 0.85). "
        f"Continuation steering, matching word minus others: {r['continuation']['matching']['value']:.2f} nats "
        f"(p = {r['continuation']['matching']['p']:.3g}). Verdicts: "
        + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in r["verdicts"].items()) + ".")
    if "sparse_k" in r:
        text += (f" Sparse design: k = {r['sparse_k']['k']} opponents per activity reproduce the full tournament at "
                 f"Spearman >= {r['sparse_k']['threshold']} in every one of the designs tried.")
    return text


# ---- what preferences lose when a direction is ablated (notebook 06) ----------------------------------------
def ablation_preferences(model: Model, activities: Sequence[str], categories: Sequence[str], full: Tournament,
                         conditions: dict[str, ChoiceAblation], k: int, seed: int = 0,
                         cost_texts: Sequence[str] = (), n_boot: int = 2000,
                         progress: bool = True) -> dict[str, dict[str, Any]]:
    """Ratings on a sparse design (each activity against ``k`` opponents, both orders; cached tournaments) with
    each condition's subspaces ablated at every token, against the same design unablated (the same pairs, so
    design noise is shared; every prompt run in full on both sides) and ``full``'s ratings. Per condition:
    Spearman with the unablated sparse ratings and with the full tournament's, the good-vs-bad d', the spread of the ratings (SD in Elo points) and the mean
    absolute rating change per activity with a bootstrap CI over activities, and the cost on ``cost_texts``."""
    from scipy.stats import spearmanr
    from tqdm.auto import tqdm

    from emolens.interventions import intervention_cost
    from emolens.patching import ablation_by_layer

    bridge, spec = model
    pairs = sparse_pairs(len(activities), k, seed)
    # the ablated runs put hooks on every prompt, which runs it in full: so does the unablated reference
    clean = tournament(model, activities, pairs, progress=False, prefix_reuse=False)
    full_r = bradley_terry(full.n, full.outcomes())
    base = bradley_terry(clean.n, clean.outcomes())
    out: dict[str, dict[str, Any]] = {}
    for name, abl in tqdm([("none", None), *conditions.items()], desc="ablated tournaments", disable=not progress):
        t = clean if abl is None else tournament(model, activities, pairs, progress=False, ablate=abl)
        theta = bradley_terry(t.n, t.outcomes())
        change = np.abs(theta - base) * ELO_PER_LOGIT
        row = {"n_pairs": len(pairs), "k": k,
               "spearman_vs_unablated": float(spearmanr(theta, base)[0]),
               "spearman_vs_full": float(spearmanr(theta, full_r)[0]),
               "good_vs_bad": good_vs_bad(theta, categories), "spread_elo": float(np.std(theta) * ELO_PER_LOGIT),
               "mean_abs_change": mean_ci(change, n_boot), "first_option_rate": t.first_option_rate(),
               "rating": to_elo_scale(theta)}
        if abl is not None:
            row["dims"] = abl.key()["dims"]
            if cost_texts:
                bases = abl.tensors()
                row["cost"] = intervention_cost(bridge, spec, list(cost_texts),
                                                lambda bases=bases: ablation_by_layer(bridge, spec, bases))
        out[name] = row
    return out
