"""The gradient noise scale: unbiased |G|^2 and tr(Sigma) from gradient norms at two batch sizes.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", Appendix A. For a batch
of B samples the mean gradient G_B satisfies E|G_B|^2 = |G|^2 + tr(Sigma) / B, with G the true
gradient and Sigma the per-example gradient covariance. Two batch sizes b < B give two unbiased
equations, solved by

    |G|^2     = (B |G_B|^2 - b |G_b|^2) / (B - b)                           (A.2)
    tr(Sigma) = (|G_b|^2 - |G_B|^2) / (1/b - 1/B)                           (A.3)
    B_simple  = tr(Sigma) / |G|^2                                           (2.2, 2.8)

Where the two norms come from, in `TrainStep` (training/steps/train_step.py):

- R >= 2 replicas: each replica's local gradient (b = B / R; |G_b|^2 is the mean over the R
  replicas of their squared norms, an average of R unbiased samples) and the all-reduced one
  (batch B). This is `count = R` parts of one global batch: b = B / count.
- one replica: two consecutive updates' gradients (b = B each) and their mean (2B): `count = 2`.
  Biased by the parameter change between the two updates (as the reference implementation,
  petuum/adaptdl `GradientNoiseScale`, says of its own differenced estimator); small for a
  small learning rate.

`SmoothedGradientStats` averages the per-update estimates of |G|^2 and tr(Sigma) separately
(never their ratio, which is biased: McCandlish Appendix A) with a bias-corrected exponential
moving average whose decay per update is `smoothing ** (B / reference_batch)`, so that an update
of twice the samples counts twice (as adaptdl's `theta = smoothing ** scale`). Its variables are
Keras variables (any backend); the framework loop checkpoints them (exact resume).
"""

from __future__ import annotations

import keras
from keras import ops


def unbiased_estimates(small_sqr, big_sqr, small_batch, big_batch):
    """(|G|^2, tr(Sigma)) from E|G_b|^2 at batch `small_batch` and |G_B|^2 at `big_batch`.

    Eqs. A.2, A.3 above; works on floats, NumPy arrays and backend tensors.
    """
    g2 = (big_batch * big_sqr - small_batch * small_sqr) / (big_batch - small_batch)
    trace = (small_sqr - big_sqr) / (1.0 / small_batch - 1.0 / big_batch)
    return g2, trace


def estimates_from_parts(mean_part_sqr, total_sqr, batch, count):
    """(|G|^2, tr(Sigma)) when a batch of `batch` samples is `count` equal parts.

    `mean_part_sqr`: the mean over the parts of |G_part|^2 (each part has batch / count
    samples); `total_sqr`: |G_batch|^2 of the mean of the parts' gradients. Same as
    `unbiased_estimates(mean_part_sqr, total_sqr, batch / count, batch)`:
    |G|^2 = (count total - mean_part) / (count - 1), tr(Sigma) = (mean_part - total) batch /
    (count - 1).
    """
    g2 = (count * total_sqr - mean_part_sqr) / (count - 1.0)
    trace = (mean_part_sqr - total_sqr) * batch / (count - 1.0)
    return g2, trace


def b_simple(g2, trace):
    """B_simple = tr(Sigma) / |G|^2 (McCandlish Eq. 2.8); +inf where |G|^2 <= 0."""
    return trace / g2 if g2 > 0 else float("inf")


def smoothed_update(state, g2, trace, batch, *, reference_batch: float, smoothing: float):
    """The averages' next values (sqr_biased, trace_biased, unbias) after one estimate at
    `batch` samples: x <- theta x + (1 - theta) estimate, theta = smoothing ** (batch /
    reference_batch); unchanged for a non-finite estimate. Pure (keras.ops), any backend."""
    sqr_biased, trace_biased, unbias = (ops.convert_to_tensor(v) for v in state)
    g2 = ops.cast(g2, "float32")
    trace = ops.cast(trace, "float32")
    ok = ops.logical_and(ops.isfinite(g2), ops.isfinite(trace))
    theta = ops.power(ops.cast(smoothing, "float32"),
                      ops.cast(batch, "float32") / float(reference_batch))
    theta = ops.where(ok, theta, 1.0)
    return (theta * sqr_biased + (1.0 - theta) * ops.where(ok, g2, 0.0),
            theta * trace_biased + (1.0 - theta) * ops.where(ok, trace, 0.0),
            theta * unbias + (1.0 - theta))


def smoothed_values(sqr_biased, trace_biased, unbias) -> dict:
    """Host-side grad_sqr, grad_trace, b_simple from the averages' variables (None before the
    first estimate; b_simple None while |G|^2 <= 0)."""
    u = float(ops.convert_to_numpy(unbias))
    if u <= 0:
        return {"grad_sqr": None, "grad_trace": None, "b_simple": None}
    g2 = float(ops.convert_to_numpy(sqr_biased)) / u
    trace = float(ops.convert_to_numpy(trace_biased)) / u
    return {"grad_sqr": g2, "grad_trace": trace,
            "b_simple": b_simple(g2, trace) if g2 > 0 else None}


class SmoothedGradientStats:
    """Bias-corrected moving averages of |G|^2 and tr(Sigma); Keras variables, any backend.

        stats = SmoothedGradientStats(reference_batch=128)
        stats.update(g2, trace, batch)          # in-graph or eager, once per estimate
        stats.sqr(), stats.trace(), stats.b_simple()

    `smoothing` is the decay per update at `reference_batch` samples (0.999 as adaptdl); an
    update at batch B decays by smoothing ** (B / reference_batch). The averages start at 0
    with a separate weight (`unbias`), so the first estimate is taken as it is.
    """

    def __init__(self, reference_batch: int, smoothing: float = 0.999, name: str = "gns"):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1); got {smoothing!r}")
        self.reference_batch = float(reference_batch)
        self.smoothing = float(smoothing)
        self.sqr_biased = keras.Variable(0.0, dtype="float32", trainable=False,
                                         name=f"{name}_sqr_biased")
        self.trace_biased = keras.Variable(0.0, dtype="float32", trainable=False,
                                           name=f"{name}_trace_biased")
        self.unbias = keras.Variable(0.0, dtype="float32", trainable=False,
                                     name=f"{name}_unbias")

    @property
    def variables(self) -> list:
        return [self.sqr_biased, self.trace_biased, self.unbias]

    def update(self, g2, trace, batch) -> None:
        """Fold one estimate in; a non-finite one (an overflowing mixed-precision step) is
        skipped, as adaptdl skips it."""
        new = smoothed_update((self.sqr_biased, self.trace_biased, self.unbias), g2, trace,
                              batch, reference_batch=self.reference_batch,
                              smoothing=self.smoothing)
        for variable, value in zip(self.variables, new):
            variable.assign(value)

    def _mean(self, biased):
        u = ops.convert_to_tensor(self.unbias)
        return ops.where(u > 0, biased / ops.where(u > 0, u, 1.0), 0.0)

    def sqr(self):
        """Smoothed |G|^2 (a tensor; 0 before the first estimate)."""
        return self._mean(self.sqr_biased)

    def trace(self):
        """Smoothed tr(Sigma), per example (a tensor; 0 before the first estimate)."""
        return self._mean(self.trace_biased)

    def ready(self) -> bool:
        """Whether at least one estimate has been folded in (host-side)."""
        return float(ops.convert_to_numpy(self.unbias)) > 0.0

    def values(self) -> dict[str, float]:
        """Host-side floats: grad_sqr, grad_trace, b_simple (None before the first estimate)."""
        return smoothed_values(*self.variables)
