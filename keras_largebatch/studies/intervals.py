"""Paired differences over seeds with a 95% t-interval, and the verdict the interval allows.

    iv = paired_t_interval(lars_acc, sgd_acc)          # one value per seed, same seeds in order
    iv.mean, iv.low, iv.high                           # mean difference and its 95% interval
    interval_verdict(iv, direction=+1, min_effect=0.5) # "reproduced" | "not reproduced" | ...

With n seeds, d_i = a_i - b_i, mean m, sample standard deviation s (n - 1 in the denominator):

    m +- t_{0.975, n-1} s / sqrt(n)

(Student's t: the seeds are few; scipy.stats.t gives the quantile). A verdict states what the
interval supports about a claim "a exceeds b by at least `min_effect`" (direction -1: "a is
below b by at least"): "reproduced" when the whole interval lies beyond `min_effect` in the
claimed direction, "not reproduced" when the whole interval lies short of it (the claim
tested and failed), "inconclusive" when the interval straddles it (more seeds can decide).
"Not tested" is not the interval's to say: a setting that could not test the claim (BA never
growing its batch) is labelled so by the study, not computed here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    std: float            # of the differences (n - 1 in the denominator)
    confidence: float

    def __str__(self) -> str:
        return (f"{self.mean:+.3g} [{self.low:+.3g}, {self.high:+.3g}] "
                f"({self.confidence:.0%} t-interval, n = {self.n})")


def paired_t_interval(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> Interval:
    """The mean of a_i - b_i and its t-interval (module docstring). Needs n >= 2 pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired values: {len(a)} against {len(b)}; give one per seed each")
    n = len(a)
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 seeds; got {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    from scipy import stats

    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean = sum(d) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std, confidence)


def interval_verdict(interval: Interval, *, direction: int = 1, min_effect: float = 0.0) -> str:
    """"reproduced" | "not reproduced" | "inconclusive" for the claim in the module docstring."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1; got {direction!r}")
    low, high = sorted((direction * interval.low, direction * interval.high))
    if low > min_effect:
        return "reproduced"
    if high < min_effect:
        return "not reproduced"
    return "inconclusive"
