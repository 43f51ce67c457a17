"""Drift statistics: PSI, Jensen-Shannon and two-sample KS, each with a sample-size-aware threshold.

Every score comes with the threshold it is judged against, and that threshold is the larger of
a fixed floor (how big a shift has to be to matter) and the value the statistic reaches by
chance alone at significance `alpha` for these two sample sizes (so a window of 30 requests
does not alarm on noise that a window of 3000 would average away):

- PSI over bins cut at the reference's deciles: under no drift,
  PSI / (1/n + 1/m) is about chi-square with (bins - 1) degrees of freedom.
- Jensen-Shannon divergence (base 2, 0..1) of two categorical mixes: under no drift,
  8 ln2 JS / (1/n + 1/m) is about chi-square with (categories - 1) degrees of freedom.
- KS distance (the largest gap between the two empirical CDFs): Kolmogorov's critical value
  sqrt(-ln(alpha/2) / 2) * sqrt(1/n + 1/m).
- Centroid shift of prompt embeddings (the distance between the two windows' mean vectors):
  under no drift, its square is about tr(S) (1/n + 1/m) chi-square(k) / k, with S the pooled
  within-window covariance and k = tr(S)^2 / tr(S^2) (Satterthwaite's effective dimensions).
Chi-square quantiles use the Wilson-Hilferty approximation. Pure Python and numpy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

EPS = 1e-4  # probability given to an empty bin, so a log never sees zero
NUM_BINS = 10
# Floors: below these a shift is too small to act on, however many requests show it.
PSI_FLOOR = 0.1  # the usual "moderate shift" mark (0.25: major)
JS_FLOOR = 0.01  # bits (a 2 % -> 8 % rate is 0.015)
KS_FLOOR = 0.1
CENTROID_FLOOR = 0.05  # distance between mean unit vectors (cosine ~ 0.999 at 0.05)


@dataclass(frozen=True)
class Score:
    """One feature's drift: the statistic, its value, the threshold and whether it is over."""

    statistic: str  # psi | js | ks | centroid
    value: float
    threshold: float
    num_reference: int
    num_current: int

    @property
    def is_drifting(self) -> bool:
        return self.value > self.threshold

    def as_dict(self) -> dict:
        return {"statistic": self.statistic, "value": round(self.value, 6),
                "threshold": round(self.threshold, 6), "drifting": self.is_drifting,
                "num_reference": self.num_reference, "num_current": self.num_current}


def chi2_quantile(p: float, dof: float) -> float:
    """The p-quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty)."""
    k = max(1.0, dof)
    z = NormalDist().inv_cdf(p)
    return k * max(0.0, 1.0 - 2.0 / (9.0 * k) + z * math.sqrt(2.0 / (9.0 * k))) ** 3


def _inverse_sizes(n: int, m: int) -> float:
    return 1.0 / max(1, n) + 1.0 / max(1, m)


def bin_edges(reference: Sequence[float], num_bins: int = NUM_BINS) -> np.ndarray:
    """Inner bin edges from the reference: its minimum and its inner quantiles, deduplicated.
    Values below the reference minimum get a bin of their own, so a feature that was constant
    in the reference still shows a shift to smaller values."""
    ref = np.asarray(reference, dtype=np.float64)
    inner = np.quantile(ref, np.linspace(0, 1, num_bins + 1)[1:-1])
    return np.unique(np.concatenate(([ref.min()], inner)))


def histogram(values: Sequence[float], edges: np.ndarray) -> np.ndarray:
    """Bin fractions, with EPS for empty bins, summing to one. Bin i holds edges[i-1] <= x <
    edges[i]; bin 0 is below edges[0]."""
    counts = np.bincount(np.searchsorted(edges, np.asarray(values, np.float64), side="right"),
                         minlength=len(edges) + 1).astype(np.float64)
    probs = np.maximum(counts / max(1, counts.sum()), EPS)
    return probs / probs.sum()


def psi(reference: Sequence[float], current: Sequence[float], alpha: float = 1e-3,
        num_bins: int = NUM_BINS) -> Score:
    """Population stability index of `current` against `reference`."""
    edges = bin_edges(reference, num_bins)
    p, q = histogram(reference, edges), histogram(current, edges)
    value = float(np.sum((q - p) * np.log(q / p)))
    n, m = len(reference), len(current)
    chance = chi2_quantile(1.0 - alpha, len(p) - 1) * _inverse_sizes(n, m)
    return Score("psi", value, max(PSI_FLOOR, chance), n, m)


def _mix(counts: Mapping[str, float], keys: Sequence[str]) -> np.ndarray:
    probs = np.maximum(np.array([float(counts.get(k, 0.0)) for k in keys]), 0.0)
    total = probs.sum()
    return probs / total if total > 0 else np.full(len(keys), 1.0 / len(keys))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0: same, 1: disjoint)."""
    mid = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / mid[nz])))

    return max(0.0, (kl(p) + kl(q)) / 2)


def js(reference: Mapping[str, float], current: Mapping[str, float], num_reference: int,
       num_current: int, alpha: float = 1e-3) -> Score:
    """Jensen-Shannon between two mixes given as {category: count or weight}; the sample sizes
    are the numbers of requests behind each mix (not the weights: characters of one prompt are
    no independent draws)."""
    keys = sorted(set(reference) | set(current))
    if len(keys) < 2:
        return Score("js", 0.0, JS_FLOOR, num_reference, num_current)
    value = js_divergence(_mix(reference, keys), _mix(current, keys))
    chance = (chi2_quantile(1.0 - alpha, len(keys) - 1) * _inverse_sizes(num_reference,
                                                                          num_current)
              / (8.0 * math.log(2.0)))
    return Score("js", value, max(JS_FLOOR, chance), num_reference, num_current)


def ks(reference: Sequence[float], current: Sequence[float], alpha: float = 1e-3) -> Score:
    """Two-sample Kolmogorov-Smirnov distance of `current` against `reference`."""
    a = np.sort(np.asarray(reference, np.float64))
    b = np.sort(np.asarray(current, np.float64))
    points = np.concatenate((a, b))
    gap = np.abs(np.searchsorted(a, points, side="right") / len(a)
                 - np.searchsorted(b, points, side="right") / len(b))
    value = float(gap.max()) if len(points) else 0.0
    chance = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt(_inverse_sizes(len(a), len(b)))
    return Score("ks", value, max(KS_FLOOR, chance), len(a), len(b))


def centroid_shift(reference: Sequence[Sequence[float]], current: Sequence[Sequence[float]],
                   alpha: float = 1e-3) -> Score:
    """Distance between the mean embedding of `reference` and that of `current` (rows are
    vectors of one encoder)."""
    a, b = np.asarray(reference, np.float64), np.asarray(current, np.float64)  # [n, d], [m, d]
    n, m = len(a), len(b)
    value = float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)))
    centered = np.concatenate((a - a.mean(axis=0), b - b.mean(axis=0)))  # [n + m, d]
    dof = max(1, n + m - 2)
    trace = float(np.sum(centered ** 2)) / dof  # tr(S)
    # tr(S^2) = |X^T X|_F^2 / dof^2, and |X^T X|_F = |X X^T|_F: take the smaller Gram.
    gram = centered @ centered.T if n + m < centered.shape[1] else centered.T @ centered
    trace_sq = float(np.sum(gram ** 2)) / dof ** 2
    k = trace * trace / trace_sq if trace_sq > 0 else 1.0
    chance = math.sqrt(chi2_quantile(1.0 - alpha, k) / k * trace * _inverse_sizes(n, m))
    return Score("centroid", value, max(CENTROID_FLOOR, chance), n, m)
