"""Confidence intervals for scores, so that a difference of two points on 100 items is not called a win.

Percentile bootstrap (Efron & Tibshirani 1993) by scipy.stats.bootstrap, seeded; pass@k by the
unbiased estimator of Chen et al. 2021 (the Codex paper).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bootstrap_ci(scores, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item scores."""
    data = np.asarray(scores, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_ci: no scores")
    if data.size == 1:  # every resample of one item is that item (scipy refuses a single observation)
        return float(data[0]), float(data[0])
    result = bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _ratio_of_sums(parts, wholes, axis=-1):
    return np.sum(parts, axis=axis) / np.maximum(np.sum(wholes, axis=axis), 1)


def ratio_ci(parts, wholes, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(parts) / sum(wholes), a pooled rate such as tool errors per
    call: each item's part and whole are resampled together."""
    parts, wholes = np.asarray(parts, dtype=float), np.asarray(wholes, dtype=float)
    if parts.shape != wholes.shape or parts.size == 0:
        raise ValueError(f"ratio_ci: need two equally long, non-empty lists, got {parts.size} and {wholes.size}")
    point = float(_ratio_of_sums(parts, wholes))
    if parts.size == 1 or np.all(parts * wholes.sum() == wholes * parts.sum()):
        return point, point  # every resample has the same rate (scipy refuses a degenerate sample)
    result = bootstrap((parts, wholes), _ratio_of_sums, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", vectorized=True, paired=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(a, b, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> dict:
    """mean(a) - mean(b) with its interval; a[i] and b[i] are two models on the same item i, so items
    are resampled together (the pairing removes the items' own difficulty from the noise)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_difference: need two equally long, non-empty score lists, "
                         f"got {a.size} and {b.size}")
    if a.size == 1:  # every resample of one item is that item (scipy refuses a single observation)
        diff = float(a[0] - b[0])
        return {"diff": diff, "low": diff, "high": diff, "significant": diff != 0.0}
    result = bootstrap((a, b), _mean_difference, n_resamples=resamples, confidence_level=confidence,
                       method="percentile", vectorized=True, paired=True, rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {"diff": float(a.mean() - b.mean()), "low": low, "high": high, "significant": not low <= 0.0 <= high}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn from n of which c are correct, is correct:
    1 - C(n-c, k) / C(n, k), as a product so that large n neither overflows nor loses precision."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
