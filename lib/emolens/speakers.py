"""Speakers and dissociation: where each speaker's words sit in a formatted dialogue, activations pooled over one
speaker's tokens, probes built from them with the story recipe's centring and denoising, and a measure of how far
a change in behaviour or internal state runs ahead of the emotion a model expresses in its text.

Positions (paper section 3.2). A dialogue is rendered one of three ways (:data:`RENDERINGS`):

- ``"chat"``: the model's chat template (or the plain Human/Assistant format where it has none); the speaker
  named "Human" is the user and "Assistant" the assistant; in a two-names dialogue the first speaker is the user.
- ``"swapped"``: the same turns with the two roles exchanged, so the text the Human wrote is read as the
  Assistant's and the other way round (separates the role from the words).
- ``"plain"``: a transcript ``"Name: line"`` per turn after any context line, no template (the neutral-name
  variant when the speakers are two names).

A speaker's positions are the tokens of that speaker's own words: never a role header, a name, a chat marker or
a special token. A token belongs to a turn when more than half of its visible (non-whitespace) characters do, so
a token that merges the end of a line with the following newlines ("." + "\\n\\n") counts with the line.

Dissociation (paper section 8, which judged it by reading transcripts): a change in behaviour set against the
change in expressed emotion, both standardised by their own spread, with bootstrap intervals
(:func:`dissociation`). Expression is measured from the text alone (:func:`lexicon_rates`) and by reading the
text back through the model (:func:`read_back`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from emolens.activations import forward_layers, length_batches, pooled_reader, special_ids
from emolens.models.spec import ModelError, ModelSpec
from emolens.stats import Estimate

if TYPE_CHECKING:
    import torch

    from emolens.data.dialogues import Dialogue
    from emolens.models.spec import Model
    from emolens.vectors import EmotionVectors

RENDERINGS = ("chat", "swapped", "plain")
SPEAKER_VERSION = 1  # bump when a change alters pooled speaker activations, so old caches are not reused


# ---- positions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeakerTokens:
    """A rendered dialogue: its text and token ids, and the own-word token positions of each turn and speaker."""

    text: str
    ids: list[int]
    turn_positions: list[list[int]]
    turn_speakers: list[int]

    def positions(self, speaker: int) -> list[int]:
        """Every own-word token position of ``speaker`` (0 or 1), in order."""
        if speaker not in (0, 1):
            raise ValueError(f"speaker must be 0 or 1, got {speaker!r}")
        return [p for ps, s in zip(self.turn_positions, self.turn_speakers) if s == speaker for p in ps]


def speaker_roles(dialogue: Dialogue, rendering: str) -> tuple[str, str]:
    """The chat roles ("user"/"assistant") of speakers 0 and 1 under ``rendering`` ("chat" or "swapped")."""
    if rendering not in ("chat", "swapped"):
        raise ValueError(f"rendering {rendering!r} has no chat roles: use 'chat' or 'swapped'")
    names = tuple(dialogue.speakers)
    if set(names) == {"Human", "Assistant"}:
        roles = tuple("user" if n == "Human" else "assistant" for n in names)
    else:
        roles = ("user", "assistant")  # two names: the first speaker takes the user's place
    if rendering == "swapped":
        roles = tuple("assistant" if r == "user" else "user" for r in roles)
    return roles[0], roles[1]


def speaker_groups(dialogue: Dialogue, rendering: str) -> tuple[str, str]:
    """What the model sees each speaker as: "Human"/"Assistant" (the chat role, or the name in a plain
    Human/Assistant transcript), or "first"/"second" for two named speakers in plain form."""
    if rendering == "plain":
        names = tuple(dialogue.speakers)
        return (names[0], names[1]) if set(names) == {"Human", "Assistant"} else ("first", "second")
    r = speaker_roles(dialogue, rendering)
    return ("Human" if r[0] == "user" else "Assistant", "Human" if r[1] == "user" else "Assistant")


def render(spec: ModelSpec, dialogue: Dialogue, rendering: str = "chat",
           max_turns: int | None = None) -> tuple[str, list[tuple[int, int]], list[int]]:
    """``(text, char span of each turn's words, speaker of each turn)`` of the first ``max_turns`` turns."""
    if rendering not in RENDERINGS:
        raise ValueError(f"rendering {rendering!r} not allowed: choose one of {RENDERINGS}")
    if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1):
        raise ValueError(f"max_turns must be an int >= 1 or None, got {max_turns!r}")
    turns = list(dialogue.turns[:max_turns])
    if not turns:
        raise ValueError(f"dialogue {dialogue.id!r} has no turns")
    if rendering == "plain":
        return _render_plain(dialogue, turns)
    roles = speaker_roles(dialogue, rendering)
    msgs = ([{"role": "system", "content": dialogue.context}] if dialogue.context else [])
    msgs += [{"role": roles[s], "content": t} for s, t in turns]
    text = spec.format_chat(msgs)
    return text, _locate(text, [t for _, t in turns], dialogue.id), [s for s, _ in turns]


def _render_plain(dialogue: Dialogue, turns: list[tuple[int, str]]) -> tuple[str, list[tuple[int, int]], list[int]]:
    text, spans = (f"{dialogue.context}\n\n" if dialogue.context else ""), []
    for k, (s, t) in enumerate(turns):
        text += f"{dialogue.speakers[s]}: "
        spans.append((len(text), len(text) + len(t)))
        text += t + ("\n\n" if k < len(turns) - 1 else "")
    return text, spans, [s for s, _ in turns]


def _locate(text: str, contents: Sequence[str], did: str) -> list[tuple[int, int]]:
    """Char spans of each content in ``text``, searched in order (a template may add text between turns)."""
    spans, cursor = [], 0
    for k, c in enumerate(contents):
        i = text.find(c, cursor)
        if i < 0:
            raise ModelError(f"dialogue {did!r}: turn {k} is not found verbatim in the formatted text (the chat "
                             "template altered it); cannot place its tokens")
        spans.append((i, i + len(c)))
        cursor = i + len(c)
    return spans


def token_positions(spec: ModelSpec, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``text`` (as :meth:`ModelSpec.encode` gives them) and, per char span, the positions of the
    ordinary tokens mostly inside it (see :func:`_mostly_inside`)."""
    tok = spec.tokenizer
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"{spec.name}: speaker positions need a fast tokenizer (character offsets)")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = spec.encode(text)
    shift = len(ids) - len(enc.input_ids)
    if shift not in (0, 1) or ids[shift:] != list(enc.input_ids):
        raise ModelError(f"{spec.name}: token offsets do not line up with the encoded text; cannot place speakers")
    specials = special_ids(spec)
    out: list[list[int]] = []
    for a, b in spans:
        ps = []
        for k, ((s, e), t) in enumerate(zip(enc.offset_mapping, enc.input_ids)):
            if t not in specials and e > s and _mostly_inside(text, s, e, a, b):
                ps.append(k + shift)
        out.append(ps)
    return ids, out


def _mostly_inside(text: str, s: int, e: int, a: int, b: int) -> bool:
    """Whether token chars [s, e) belong to span [a, b): more than half of its visible characters lie inside
    (whitespace merged into a token, like the newline after a line, does not decide); an all-whitespace token
    only when wholly inside."""
    visible = [i for i in range(s, e) if not text[i].isspace()]
    if not visible:
        return a <= s and e <= b
    return 2 * sum(a <= i < b for i in visible) > len(visible)


def speaker_tokens(spec: ModelSpec, dialogue: Dialogue, rendering: str = "chat",
                   max_turns: int | None = None) -> SpeakerTokens:
    """The dialogue rendered for ``spec`` with each turn's own-word token positions.

    Example::

        st = speaker_tokens(spec, dialogue, "chat", max_turns=4)
        st.positions(0)        # token positions of the first speaker's words
    """
    text, spans, speakers = render(spec, dialogue, rendering, max_turns)
    ids, pos = token_positions(spec, text, spans)
    empty = [k for k, p in enumerate(pos) if not p]
    if empty:
        raise ModelError(f"dialogue {dialogue.id!r}: turn(s) {empty} have no token of their own after formatting")
    return SpeakerTokens(text, ids, pos, speakers)


def message_positions(spec: ModelSpec, messages: Sequence[Mapping[str, str]],
                      add_generation_prompt: bool = False) -> tuple[list[int], list[list[int]]]:
    """Token ids of a chat exchange and each message's own-word positions (e.g. the user's last token)."""
    text = spec.format_chat(list(messages), add_generation_prompt=add_generation_prompt)
    return token_positions(spec, text, _locate(text, [m["content"] for m in messages], "exchange"))


# ---- pooled activations over positions ----------------------------------------------------------------


def span_means(bridge: Any, spec: ModelSpec, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
               layer: int, batch_size: int = 8, progress: bool = True) -> Any:
    """Mean residual ``[n, d]`` (float32) at ``layer`` over the given positions of each token sequence, with the
    extraction engine's batching and early stop; a sequence with no position gets a NaN row."""
    import torch
    from tqdm.auto import tqdm

    layer = spec.check_layer(layer)
    if len(seqs) != len(positions):
        raise ValueError(f"{len(seqs)} sequences but {len(positions)} position lists")
    for i, (s, ps) in enumerate(zip(seqs, positions)):
        if any(not 0 <= p < len(s) for p in ps):
            raise ValueError(f"sequence {i}: a position is outside its {len(s)} tokens")
    n = len(seqs)
    sums = torch.zeros((n, spec.d_model), dtype=torch.float32)
    counts = torch.tensor([len(p) for p in positions], dtype=torch.long)
    bar = tqdm(total=n, desc="speaker tokens", disable=not progress, leave=False)
    for batch in length_batches([len(s) for s in seqs], batch_size):
        batch = [i for i in batch if counts[i] > 0]
        if not batch:
            continue
        owner = torch.tensor([i for i in batch for _ in positions[i]], dtype=torch.long)

        def add(_: int, x: Any, owner: Any = owner) -> None:
            sums.index_add_(0, owner, x.float().cpu())

        forward_layers(bridge, spec, [seqs[i] for i in batch], [layer], "resid_post",
                       pooled_reader([positions[i] for i in batch], add))
        bar.update(len(batch))
    bar.close()
    means = sums / counts.clamp(min=1).view(-1, 1)
    means[counts == 0] = float("nan")
    return means


def speaker_activations(model: Model, dialogues: Sequence[Dialogue], layer: int, rendering: str = "chat",
                        max_turns: int | None = None, batch_size: int = 8, progress: bool = True) -> Any:
    """Mean residual ``[n, 2, d]`` at ``layer`` over each speaker's own words, per dialogue; cached under a key
    naming the model, weights, layer, rendering, turn limit and the rendered texts and positions."""
    from emolens.cache import cached, content_hash

    bridge, spec = model
    if not dialogues:
        raise ValueError("no dialogues given")
    layer = spec.check_layer(layer)
    toks = [speaker_tokens(spec, d, rendering, max_turns) for d in dialogues]
    key = {"model": spec.name, "weights": spec.weight_sha256 or spec.weight_source, "dtype": spec.dtype,
           "layer": layer, "rendering": rendering, "max_turns": max_turns, "version": SPEAKER_VERSION,
           "inputs": content_hash([[t.ids, t.positions(0), t.positions(1)] for t in toks])}

    def compute() -> tuple[dict[str, Any], dict[str, Any]]:
        seqs = [t.ids for t in toks for _ in (0, 1)]
        pos = [t.positions(s) for t in toks for s in (0, 1)]
        m = span_means(bridge, spec, seqs, pos, layer, batch_size, progress)
        return {"means": m.view(len(toks), 2, spec.d_model).contiguous()}, {"n": len(toks),
                                                                           "ids": [d.id for d in dialogues]}

    t, _ = cached("speakers", key, compute)
    return t["means"]


# ---- probes ---------------------------------------------------------------------------------------------


@dataclass
class DialogueProbes:
    """Probes from pooled speaker activations: per-emotion means, centred on their mean over emotions, with the
    neutral principal components of the story vectors projected out (the story recipe, on dialogue tokens)."""

    emotions: list[str]
    vectors: Any  # [E, d]
    centre: Any  # [d]
    neutral_pcs: Any  # [k, d]

    def scores(self, pooled: Any) -> np.ndarray:
        """Cosine ``[n, E]`` of pooled activations with the probes, centred and denoised as the probes were."""
        from emolens.stats import cosine
        from emolens.vectors import project_out

        x = project_out(torch_float(pooled) - self.centre, self.neutral_pcs)
        return cosine(x, self.vectors)


def torch_float(x: Any) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.asarray(x) if not hasattr(x, "float") else x).float()


def dialogue_probes(pooled: Any, labels: Sequence[str], emotions: Sequence[str], neutral_pcs: Any) -> DialogueProbes:
    """Probes ``[E, d]`` from pooled activations ``[n, d]`` with one emotion label each; rows with NaN (no
    tokens) are skipped; an emotion with no row is an error."""
    import torch

    from emolens.vectors import project_out

    x = torch_float(pooled)
    if x.dim() != 2 or len(labels) != x.shape[0]:
        raise ValueError(f"pooled must be [n, d] with one label per row: got {tuple(x.shape)} and {len(labels)} labels")
    ok = torch.isfinite(x).all(-1)
    means = []
    for e in emotions:
        idx = [i for i, lab in enumerate(labels) if lab == e and bool(ok[i])]
        if not idx:
            raise ValueError(f"emotion {e!r} has no pooled row to build a probe from")
        means.append(x[idx].mean(0))
    raw = torch.stack(means)
    centre = raw.mean(0)
    pcs = torch_float(neutral_pcs)
    return DialogueProbes(list(emotions), project_out(raw - centre, pcs), centre, pcs)


# ---- expressed emotion ----------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@lru_cache(maxsize=2)
def _banned() -> Any:
    from emolens.data.leaks import load_banned_words

    return load_banned_words()


@lru_cache(maxsize=1)
def _warriner() -> dict[str, tuple[float, float, float]]:
    from emolens.data.ratings import load_warriner

    return load_warriner()


def lexicon_rates(texts: Sequence[str], target: str | None = None) -> dict[str, np.ndarray]:
    """Expressed emotion from the words alone, per text: ``emotion_words`` (words from any of the 171 banned-word
    lists, per 100 words), ``target_words`` (those of ``target``'s list; NaN without a target), ``valence``
    (mean Warriner valence of the words the norms rate, 1-9) and ``affect`` (mean distance of that valence from
    the neutral 5: how loaded the wording is, whatever its sign). A text with no word gets NaN."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    banned, norms = _banned(), _warriner()
    if target is not None and target not in banned.terms:
        raise ValueError(f"no banned-word list for target emotion {target!r}")
    out: dict[str, list[float]] = {"emotion_words": [], "target_words": [], "valence": [], "affect": []}
    for t in texts:
        ws = _WORD.findall(t.lower())
        if not ws:
            for k in out:
                out[k].append(float("nan"))
            continue
        hits = banned.spans(t)
        out["emotion_words"].append(100 * len(hits) / len(ws))
        out["target_words"].append(100 * len(banned.leaks(target, t)) / len(ws) if target else float("nan"))
        vals = [norms[w][0] for w in ws if w in norms]
        out["valence"].append(float(np.mean(vals)) if vals else float("nan"))
        out["affect"].append(float(np.mean(np.abs(np.asarray(vals) - 5))) if vals else float("nan"))
    return {k: np.asarray(v, float) for k, v in out.items()}


def read_back(model: Model, vectors: EmotionVectors, texts: Sequence[str], layer: int, start: int = 0,
              batch_size: int = 8) -> np.ndarray:
    """Scores ``[n, E]`` of texts read back by the (unsteered) model as plain text: the mean residual from own
    token ``start`` on, centred and denoised as the vectors were made. Generated replies are short, so the default
    reads from the first token rather than the recipe's 50th; compare texts read the same way."""
    from emolens.activations import Pooling, pooled_means

    bridge, spec = model
    vectors.check_model(spec)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    means, counts = pooled_means(bridge, spec, list(texts), [layer], Pooling(start=start), batch_size=batch_size,
                                 progress=False)
    out = vectors.scores(means[:, 0].nan_to_num(), layer)
    out[np.asarray(counts) == 0] = np.nan
    return out


# ---- the dissociation measure ---------------------------------------------------------------------------


def standardised_change(base: Any, cond: Any, paired: bool = True) -> float:
    """Mean change from ``base`` to ``cond`` in units of their pooled standard deviation (Cohen's d; with
    ``paired`` the mean of the per-unit differences). Unit-free, so a behaviour and a word rate can be compared."""
    b, c = np.asarray(base, float), np.asarray(cond, float)
    if paired and b.shape != c.shape:
        raise ValueError(f"paired samples must have the same shape: {b.shape} vs {c.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt((np.nanvar(b, ddof=1) + np.nanvar(c, ddof=1)) / 2)
        diff = np.nanmean(c - b) if paired else np.nanmean(c) - np.nanmean(b)
    scale = max(1.0, float(np.nanmax(np.abs(np.concatenate([b.ravel(), c.ravel()])))))
    if not np.isfinite(sd) or sd <= 1e-9 * scale:
        # no spread at all (e.g. no emotion word in any text, before or after): nothing moved when the means
        # agree; a shift between two constants has no scale, so it is not a number
        return 0.0 if abs(diff) <= 1e-12 * scale else float("nan")
    return float(diff / sd)


def dissociation_index(d_behaviour: float, d_expression: float) -> float:
    """``(|b| - |x|) / (|b| + |x|)``: 0 when behaviour and expression move by the same standardised amount (in
    either direction), +1 when only behaviour moves, -1 when only expression moves."""
    s = abs(d_behaviour) + abs(d_expression)
    return float("nan") if s == 0 or not np.isfinite(s) else float((abs(d_behaviour) - abs(d_expression)) / s)


@dataclass(frozen=True)
class Dissociation:
    """The dissociation of one condition: standardised changes with CIs, their ratio, the index and a verdict."""

    behaviour: Estimate
    expression: dict[str, Estimate]
    ratio: dict[str, Estimate]  # expression change per unit behaviour change
    index: dict[str, Estimate]
    verdict: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return {"behaviour": self.behaviour.as_dict(),
                "expression": {k: v.as_dict() for k, v in self.expression.items()},
                "ratio": {k: v.as_dict() for k, v in self.ratio.items()},
                "index": {k: v.as_dict() for k, v in self.index.items()}, "verdict": dict(self.verdict)}


def _check_pair(name: str, base: Any, cond: Any, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    b, c = np.asarray(base, float).ravel(), np.asarray(cond, float).ravel()
    if len(b) < 2 or len(c) < 2:
        raise ValueError(f"{name}: need at least 2 samples in each condition, got {len(b)} and {len(c)}")
    if paired and len(b) != len(c):
        raise ValueError(f"{name}: paired samples need equal lengths, got {len(b)} and {len(c)}")
    if np.isnan(b).all() or np.isnan(c).all():
        raise ValueError(f"{name}: all values are NaN")
    return b, c


def _resample(b: np.ndarray, c: np.ndarray, paired: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if paired:
        i = rng.integers(0, len(b), len(b))
        return b[i], c[i]
    return b[rng.integers(0, len(b), len(b))], c[rng.integers(0, len(c), len(c))]


def _verdict(b: Estimate, x: Estimate) -> str:
    moves_b, moves_x = b.low > 0 or b.high < 0, x.low > 0 or x.high < 0
    return {(True, True): "both move", (True, False): "behaviour moves, expression does not",
            (False, True): "expression moves, behaviour does not", (False, False): "neither moves"}[(moves_b, moves_x)]


def dissociation(behaviour_base: Any, behaviour_cond: Any, expression_base: Mapping[str, Any],
                 expression_cond: Mapping[str, Any], paired: bool = True, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> Dissociation:
    """Set a change in behaviour against changes in expressed emotion (one or more measures), for one condition.

    Each change is standardised (:func:`standardised_change`); the behaviour samples and each expression
    measure's samples are bootstrapped independently of one another (they may be different units, e.g. choice
    prompts and generated replies), paired within a measure when ``paired``. Returns the standardised changes,
    the ratio expression/behaviour, the :func:`dissociation_index` and a verdict per measure (a change "moves"
    when its interval excludes 0).

    Example::

        d = dissociation(p_choice_base, p_choice_steered, {"words": rate_base}, {"words": rate_steered})
        d.index["words"]      # near +1: the choice moved, the wording did not
    """
    if not expression_base or set(expression_base) != set(expression_cond):
        raise ValueError("expression_base and expression_cond must name the same, non-empty set of measures")
    if not 0 < level < 1 or n_boot < 10:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 10, got {level}, {n_boot}")
    bb, bc = _check_pair("behaviour", behaviour_base, behaviour_cond, paired)
    xs = {k: _check_pair(f"expression {k!r}", expression_base[k], expression_cond[k], paired) for k in expression_base}
    rng = np.random.default_rng(seed)
    boot_b, boot_x = [], {k: [] for k in xs}
    for _ in range(n_boot):
        boot_b.append(standardised_change(*_resample(bb, bc, paired, rng), paired))
        for k, (xb, xc) in xs.items():
            boot_x[k].append(standardised_change(*_resample(xb, xc, paired, rng), paired))
    a = (1 - level) / 2

    def est(value: float, boots: Sequence[float]) -> Estimate:
        v = np.asarray(boots, float)
        v = v[np.isfinite(v)]
        lo, hi = np.quantile(v, [a, 1 - a]) if len(v) else (np.nan, np.nan)
        return Estimate(float(value), float(lo), float(hi))

    d_b = standardised_change(bb, bc, paired)
    b_est = est(d_b, boot_b)
    expr, ratio, index, verdict = {}, {}, {}, {}
    for k, (xb, xc) in xs.items():
        d_x = standardised_change(xb, xc, paired)
        expr[k] = est(d_x, boot_x[k])
        bx = np.asarray(boot_x[k])
        bbv = np.asarray(boot_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[k] = est(d_x / d_b if d_b else float("nan"), bx / bbv)
        index[k] = est(dissociation_index(d_b, d_x), [dissociation_index(p, q) for p, q in zip(bbv, bx)])
        verdict[k] = _verdict(b_est, expr[k])
    return Dissociation(b_est, expr, ratio, index, verdict)


__all__ = ["RENDERINGS", "DialogueProbes", "Dissociation", "SpeakerTokens", "dialogue_probes", "dissociation",
           "dissociation_index", "lexicon_rates", "message_positions", "read_back", "render", "span_means",
           "speaker_activations", "speaker_groups", "speaker_roles", "speaker_tokens", "standardised_change",
           "token_positions"]
