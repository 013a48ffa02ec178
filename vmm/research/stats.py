"""Summary statistics of boot samples, and bootstrap confidence intervals of ratios.

Plain Python (no numpy): a boot benchmark has tens of samples, and `python -m vmm bench`
must work on a host that has nothing beyond the standard library.

Percentiles are the "linear" definition (numpy's default, R's type 7): with n sorted
samples, the p-th percentile sits at index p/100 * (n - 1), interpolated. With 20 samples
a p99 is therefore mostly the maximum; the table prints it because readers expect the
column, and n is printed beside it.
"""
from __future__ import annotations

import math
import random
from typing import Dict, Optional, Sequence, Tuple

SUMMARY_FIELDS = ("n", "median", "p90", "p99", "min", "max")
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 13


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of values, linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    ordered = sorted(values)
    pos = p / 100 * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def summary(values: Sequence[float]) -> Dict[str, float]:
    """n, median, p90, p99, min, max of values (which must not be empty)."""
    return {"n": len(values), "median": median(values), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "min": min(values), "max": max(values)}


def bootstrap_ratio(a: Sequence[float], b: Sequence[float], *, seed: int = DEFAULT_SEED,
                    resamples: int = DEFAULT_RESAMPLES,
                    confidence: float = DEFAULT_CONFIDENCE) -> Tuple[float, float, float]:
    """median(b) / median(a) and its percentile-bootstrap confidence interval (lo, hi).

    Each side is resampled with replacement on its own (the runs are independent; rounds
    are alternated, not paired). The same seed gives the same interval. A side whose
    resampled median is 0 cannot form a ratio: ValueError."""
    if not a or not b:
        raise ValueError("a ratio needs samples on both sides")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    base = median(a)
    if base == 0:
        raise ValueError("the baseline median is 0: no ratio")
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        ma = median(rng.choices(a, k=len(a)))
        mb = median(rng.choices(b, k=len(b)))
        if ma == 0:
            continue  # a degenerate resample; rare unless most samples are 0
        ratios.append(mb / ma)
    if not ratios:
        raise ValueError("every resampled baseline median was 0: no ratio")
    tail = (1 - confidence) / 2 * 100
    return median(b) / base, percentile(ratios, tail), percentile(ratios, 100 - tail)


def fmt_ms(value: Optional[float]) -> str:
    """A duration in ms for a table: 3 significant places where it matters."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
