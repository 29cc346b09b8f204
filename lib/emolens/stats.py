"""Uncertainty and nulls: bootstrap CIs, permutation p-values, correlations. numpy/scipy only, seeded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap confidence interval (and a null p-value when one was computed)."""

    value: float
    low: float
    high: float
    p: float | None = None
    n: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def __str__(self) -> str:
        s = f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"
        return s + (f", p={self.p:.3g}" if self.p is not None else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimate":
        return cls(**{k: d[k] for k in ("value", "low", "high", "p", "n") if k in d})


def fmt(d: dict[str, Any] | Estimate | None, digits: int = 2) -> str:
    """``0.30 [0.28, 0.32]`` for an estimate (or its dict); ``-`` when there is none."""
    if d is None:
        return "-"
    e = d if isinstance(d, Estimate) else Estimate.from_dict(d)
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def permutation_p(null: Any, observed: float, two_sided: bool = False) -> float:
    """Permutation p-value with the +1 correction: ``(#{null >= observed} + 1) / (n + 1)`` (absolute values when
    ``two_sided``), so a p-value is never 0 for a finite null."""
    null = np.asarray(null, float)
    if two_sided:
        null, observed = np.abs(null), abs(observed)
    return float((np.sum(null >= observed) + 1) / (len(null) + 1))


def exceedance(null: Any, observed: float) -> float:
    """Share of a null distribution whose magnitude reaches ``|observed|`` (e.g. random directions that move as
    much as an emotion direction)."""
    return float(np.mean(np.abs(np.asarray(null, float)) >= abs(observed)))


def rank_of_true(scores: Any, labels: Sequence[int]) -> np.ndarray:
    """1-based rank of the true label in each row of ``scores`` (1 = top; ties count in its favour)."""
    s = np.asarray(scores)
    return np.array([1 + int(np.sum(row > row[lab])) for row, lab in zip(s, labels)])


def rank_permutation_test(scores: Any, labels: Sequence[int], ks: Sequence[int] = (1, 3), n_perm: int = 2000,
                          seed: int = 1) -> dict[str, Any]:
    """Top-k rates of the true label's rank, each against a null in which the labels are permuted across rows."""
    labels = np.asarray(labels)
    rank = rank_of_true(scores, labels)
    rng = np.random.default_rng(seed)
    null = {k: [] for k in ks}
    for _ in range(n_perm):
        rk = rank_of_true(scores, rng.permutation(labels))
        for k in ks:
            null[k].append(float(np.mean(rk <= k)))
    out: dict[str, Any] = {"ranks": rank.tolist(), "n": int(len(labels))}
    for k in ks:
        rate = float(np.mean(rank <= k))
        out[f"top{k}_rate"] = rate
        out[f"p_top{k}"] = permutation_p(null[k], rate)
        out[f"null_top{k}_mean"] = float(np.mean(null[k]))
    return out


def bootstrap(stat: Callable[..., float], *arrays: Sequence[Any], n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> Estimate:
    """Percentile bootstrap of ``stat(*arrays)``, resampling the rows of all arrays together."""
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError("all arrays must have the same length")
    rng = np.random.default_rng(seed)
    value = float(stat(*arrs))
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = stat(*(a[idx] for a in arrs))
        if np.isfinite(v):
            boots.append(v)
    a = (1 - level) / 2
    lo, hi = (np.quantile(boots, [a, 1 - a]) if boots else (np.nan, np.nan))
    return Estimate(value, float(lo), float(hi), n=n)


def group_bootstrap(stat: Callable[..., float], values: Sequence[Any], groups: Sequence[Any], n_boot: int = 2000,
                    level: float = 0.95, seed: int = 0) -> Estimate:
    """Percentile bootstrap that resamples whole groups (e.g. topics), not single rows: the right interval when
    rows within a group are not independent (stories of one topic, held out together by a topic fold)."""
    v, g = np.asarray(values), np.asarray(groups)
    if len(v) != len(g):
        raise ValueError("values and groups must have the same length")
    keys = np.unique(g)
    members = [np.where(g == k)[0] for k in keys]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(keys), len(keys))])
        b = stat(v[idx])
        if np.isfinite(b):
            boots.append(b)
    a = (1 - level) / 2
    lo, hi = (np.quantile(boots, [a, 1 - a]) if boots else (np.nan, np.nan))
    return Estimate(float(stat(v)), float(lo), float(hi), n=len(keys))


def pearson(x: Any, y: Any) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: Any, y: Any) -> float:
    from scipy.stats import rankdata

    return pearson(rankdata(x), rankdata(y))


def correlation(x: Any, y: Any, method: str = "pearson", n_boot: int = 2000, n_perm: int = 2000,
                seed: int = 0) -> Estimate:
    """Correlation with a bootstrap CI and a two-sided permutation p-value (shuffled pairing)."""
    f = {"pearson": pearson, "spearman": spearman}[method]
    est = bootstrap(f, x, y, n_boot=n_boot, seed=seed)
    rng = np.random.default_rng(seed + 1)
    y = np.asarray(y)
    null = np.array([f(x, rng.permutation(y)) for _ in range(n_perm)])
    return Estimate(est.value, est.low, est.high, permutation_p(null, est.value, two_sided=True), est.n)


def random_directions(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit directions in ``d`` dimensions (a matched-norm null for unit emotion vectors)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cosine(x: Any, y: Any) -> np.ndarray:
    """Cosine similarity ``[n, m]`` of the rows of ``x [n, d]`` with the rows of ``y [m, d]`` (numpy, float64)."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else x
    y = y.detach().cpu().numpy() if hasattr(y, "detach") else y
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    y = y / np.clip(np.linalg.norm(y, axis=1, keepdims=True), 1e-12, None)
    return x @ y.T
