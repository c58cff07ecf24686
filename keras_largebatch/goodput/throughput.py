"""Throughput model of a data-parallel training step: fitted to bench/cluster.py's timings, and
online, by GoodputBatch (goodput/batch.py), to the run's own epochs.

    step_time(W, b, rate, P) = a + c * b / W                          compute of one worker
                             + [W > 1] * (alpha + beta * m / rate)    all-reduce
    m = 2 (W - 1) / W * 4 P * 8 bits                                  ring all-reduce, per worker

b is the global batch (b / W samples per worker), P the parameter count (float32 gradients),
rate the link rate in bit/s (None: unshaped, m / rate taken as 0). Fitted: a (s per step),
c (s per sample), alpha (s per multi-worker step: collective launch, gRPC round trips, the
host's own copy cost) and beta (dimensionless: 1 when the all-reduce moves exactly m bits at
the link rate; TCP/gRPC framing and a ring that is not bandwidth-optimal push it above 1).

The fit is a least-squares fit of the relative error (each row divided by its measured time),
with non-negative coefficients (a coefficient that comes out negative is fixed at 0 and the
rest refitted). Compute time per sample is the measured model's, on the measured cores: a
prediction for `--predict_params` other than the measured model changes only m, i.e. it
answers "the same network compute, with this many bytes to all-reduce". Pure numpy.

Compute and all-reduce are added, not overlapped (Pollux's p-norm with gamma = 1): TensorFlow's
MirroredStrategy / MultiWorkerMirroredStrategy all-reduce the gradients after the backward pass
inside `apply_gradients`, so on CPU workers nothing overlaps; bench/cluster.py's fit of this form
is what BUILD_NOTES "Emulated cluster" reports.

Online (`fit_online`): a run knows its step times but not its link rate, so rate = None and the
all-reduce of a W-worker run is in alpha. It may know one part of the constant directly: `fixed`,
the measured time of one gradient-sized all-reduce (training/allreduce_timing.py), a part of
every step that does not grow with the batch, since nothing overlaps it. The fit then explains
only the rest, y - fixed, with non-negative terms, so the constant is never below the measured
all-reduce. With one per-worker batch observed, the constant and per-sample terms cannot be
told apart from step times alone; the reference (petuum/adaptdl `fit_perf_params`) takes half
the step as constant, which is optimistic about larger batches, so a run explores one and then
fits both terms from two. Here the constant is max(fixed, half the step): the reference's
optimism where the link is fast, the measured all-reduce where it dominates the step (half the
step would hide a slow link: a 0.75 s step of which the all-reduce takes 0.54 s).
`fixed` is capped at 0.9 of the fastest observed step, so that a timing disturbed by other
work can never leave the batch-dependent part at zero (which would predict free samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMES = ("a", "c", "alpha", "beta")


@dataclass(frozen=True)
class Observation:
    """One measured steady-state step: `step_time` seconds at global batch `batch`."""

    workers: int
    batch: int            # global batch
    rate: float | None    # bits/s; None: unshaped link
    params: int
    step_time: float


def moved_bits(workers: int, params: int) -> float:
    """Bits a worker sends in one ring all-reduce of `params` float32 values."""
    return 2.0 * (workers - 1) / workers * 4.0 * params * 8.0


def features(workers: int, batch: float, rate: float | None, params: int) -> np.ndarray:
    multi = 1.0 if workers > 1 else 0.0
    comm = moved_bits(workers, params) / rate if (multi and rate) else 0.0
    return np.array([1.0, batch / workers, multi, comm])


@dataclass(frozen=True)
class CostModel:
    a: float
    c: float
    alpha: float
    beta: float
    rank: int = 4      # rank of the design matrix: < 4 means some parameters were not pinned

    def step_time(self, workers: int, batch: float, rate: float | None, params: int) -> float:
        return float(features(workers, batch, rate, params)
                     @ np.array([self.a, self.c, self.alpha, self.beta]))

    def epoch_time(self, workers: int, batch: int, examples: int, rate: float | None,
                   params: int) -> float:
        """One epoch of `examples` at global batch `batch` (remainder dropped, as the CLI)."""
        return (examples // batch) * self.step_time(workers, batch, rate, params)

    def run_time(self, workers: int, batches: list[int], examples: int, rate: float | None,
                 params: int) -> float:
        """A run whose epochs have the global batches `batches`."""
        return sum(self.epoch_time(workers, b, examples, rate, params) for b in batches)

    def describe(self) -> str:
        text = (f"a = {self.a * 1e3:.2f} ms/step, c = {self.c * 1e6:.1f} us/sample, "
                f"alpha = {self.alpha * 1e3:.2f} ms/all-reduce, beta = {self.beta:.2f}")
        if self.rank < 4:
            text += f" (only {self.rank} of 4 parameters pinned by these runs)"
        return text


def fit(observations: list[Observation], fixed: float = 0.0) -> CostModel:
    """Non-negative least squares on the relative error (see the module docstring); `fixed`
    seconds of every step known in advance (added to `a`, the rest fitted)."""
    if not observations:
        raise ValueError("no timings to fit")
    x = np.stack([features(o.workers, o.batch, o.rate, o.params) for o in observations])
    y = np.array([o.step_time for o in observations], dtype=float)
    w = 1.0 / y
    xw, yw = x * w[:, None], (y - fixed) * w
    active = [j for j in range(x.shape[1]) if np.any(x[:, j] != 0)]
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(xw[:, active], yw, rcond=None)
        if np.all(sol >= 0):
            coef[:] = 0
            coef[active] = sol
            break
        active = [j for j, s in zip(active, sol) if s >= 0] if np.any(sol > 0) else []
    coef[0] += fixed
    rank = int(np.linalg.matrix_rank(xw))
    return CostModel(*map(float, coef), rank=rank)


def fit_online(observations: list[Observation], fixed: float = 0.0) -> CostModel:
    """`fit` with the measured constant `fixed`, except that a single observed per-worker batch
    pins a = max(fixed, half the step) (module docstring)."""
    if not observations:
        raise ValueError("no timings to fit")
    fastest = min(o.step_time for o in observations)
    fixed = min(max(float(fixed), 0.0), 0.9 * fastest)
    per_worker = {o.batch / o.workers for o in observations}
    if len(per_worker) > 1:
        return fit(observations, fixed=fixed)
    mean = float(np.mean([o.step_time for o in observations]))
    b = per_worker.pop()
    a = max(fixed, mean / 2)
    return CostModel(a=a, c=(mean - a) / b, alpha=0.0, beta=0.0, rank=1)
