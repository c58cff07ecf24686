"""Seeds as a grid axis of a study: run names, and mean +- std over the seeds of a grid point.

    sweep.seeds = [0, 1, 2]     # in gin/studies/<study>.gin: every run once per train.seed
    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin --dry_run

`grid.sweep` expands each run (a grid point: variant x grid values) into one run per seed,
named `<point>__seed=<n>` and bound `train.seed = n` (data order, initialisation, augmentation
and dropout all follow it). Seeds are the outermost loop, so an interrupted sweep has whole
studies of its first seeds. `summary.py` then writes one row per grid point (mean and sample
standard deviation over the completed seeds, n noted) and `plot.py` draws the mean over seeds
with a band (curves) or error bars (accuracy vs base LR). A study without `sweep.seeds` keeps
one run per point, named and summarised as before.

No command of its own and no TensorFlow: NumPy only, so the aggregation is testable on plain
numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

SEED_KEY = "train.seed"        # the binding each seed sets
_SEED_NAME = re.compile(r"^(?P<point>.+)__seed=(?P<seed>\d+)$")


def run_name(point: str, seed: int) -> str:
    """The folder name of one seed of a grid point."""
    return f"{point}__seed={seed}"


def split_name(name: str) -> tuple[str, int | None]:
    """(grid point, seed) of a run folder name; (name, None) when it carries no seed."""
    match = _SEED_NAME.match(name)
    if not match:
        return name, None
    return match.group("point"), int(match.group("seed"))


def group_by_point(names: Iterable[str]) -> dict[str, list[str]]:
    """Run names grouped by grid point, points and runs in first-seen order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(split_name(name)[0], []).append(name)
    return groups


def finite_values(values: Iterable) -> list[float]:
    """The finite real numbers of `values` (None, NaN, inf and non-numbers dropped)."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            continue
        if math.isfinite(float(v)):
            out.append(float(v))
    return out


def mean_std(values: Iterable) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation (ddof 1), n) of the finite values; the std is None
    below 2 values and both are None with none."""
    xs = finite_values(values)
    if not xs:
        return None, None, 0
    arr = np.asarray(xs, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return float(arr.mean()), std, int(arr.size)


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]]
               ) -> tuple[list[float], list[float], list[float]]:
    """(x, mean, std) over the seeds' curves, at every x any of them has: a seed that stopped
    early (diverged) counts only where it has points; std is the sample std (0 with one value)."""
    by_x: dict[float, list[float]] = {}
    for x, y in curves:
        for xi, yi in zip(x, y):
            if yi is not None and math.isfinite(yi):
                by_x.setdefault(xi, []).append(float(yi))
    xs = sorted(by_x)
    means, stds = [], []
    for xi in xs:
        m, s, _ = mean_std(by_x[xi])
        means.append(m)
        stds.append(s or 0.0)
    return xs, means, stds


def check_seeds(seeds) -> tuple[int, ...]:
    """`sweep.seeds` as a tuple of distinct integers in [0, 2**32), else ValueError."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ValueError(f"sweep.seeds must be a non-empty list of integers like [0, 1, 2]; "
                         f"got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
            raise ValueError(f"sweep.seeds entry {s!r} is not an integer in [0, 2**32)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep.seeds {list(seeds)!r} repeats a seed; list each once")
    return tuple(seeds)
