"""The batch-size rule of seed 002 (Eqs. 7-9): expected next state and the best batch size.

Notation (seed 002, Sec. 2-3): s is the loss on the batch being grown, S* the user's loss floor
(`loss_floor`), eta the learning rate, mu = f . mu_p (f . f for SGD) the mean and sigma^2 =
f^T Sigma f the per-example variance of the moving step Delta s ~ N(mu, sigma^2 / m) of a batch
of m examples. The next state is s' = |s - S* - eta * Delta s| + S* (Eq. 6), so

    E_m[s'] = c * (Phi(a) - Phi(-a)) + eta * sigma * sqrt(2 / (m pi)) * exp(-a^2 / 2) + S*  (Eq. 7)
    with c = s - S* - eta * mu,  a = c * sqrt(m) / (eta * sigma);
    u(m) = (s - E_m[s']) / m                                                             (Eq. 8)
    m*   = argmax_{m in 1..max_batch_size} u(m)                                          (Eq. 9)

Eq. 7 is E|Y| + S* for Y = c + tau * Z, Z ~ N(0, 1), tau = eta * sigma / sqrt(m): with the
standard normal loss function L(x) = E[(Z - x)^+] = phi(x) - x * (1 - Phi(x)) it equals

    E_m[s'] = S* + |c| + 2 * tau * L(|a|),
    s - E_m[s'] = eta * mu - 2 * max(-c, 0) - 2 * tau * L(|a|)      (the expected decrease)

(c >= 0: c * (1 - 2 Q(a)) + 2 tau phi(a) = c + 2 tau (phi(a) - a Q(a)); c < 0 by symmetry).
These forms are what the code evaluates: no 0/0 when sigma = 0, no cancellation between a large
loss s and a tiny expected step, and no overflow for huge a (L(x) underflows smoothly to 0;
its direct form phi(x) - x Q(x) loses at most eps * x^2 relative precision, < 1e-12 for every
x where it is not already 0 in float64).

Documented edge cases (all follow from the formula, none is special-cased by hand):

- sigma = 0 (no gradient noise): s' is deterministic, E_m[s'] = S* + |c| for every m and
  u(m) = (eta mu - 2 max(-c, 0)) / m, so m* = 1 when that decrease is positive.
- mu <= 0 (the step is not expected to decrease the loss): s - E_m[s'] <= 0 for every m and it
  rises towards its limit as m grows, so u(m) is largest (least negative) at m = max_batch_size.
  (`BAMomentum` does not follow Eq. 9 here: it updates at once, see ba_momentum.py.)
- c <= 0 (the expected step overshoots the floor, or s < S*): handled by |c|; the rebound term
  -2 max(-c, 0) is exactly the rebound of Eq. 6.
- Ties (e.g. everything 0 when f = 0) resolve to the smallest m.

u is unimodal in m. Proof: write g(m) = A - 2 h(k / sqrt(m)) with A = eta mu - 2 max(-c, 0),
k = eta sigma and h(tau) = tau L(|c| / tau) = E[(tau Z - |c|)^+], which is increasing and convex
in tau. With t = 1 / sqrt(m), u = t^2 (A - 2 h(k t)) and du/dt = 2 t psi(t) where
psi(t) = A - 2 h(k t) - k t h'(k t) has psi'(t) = -3 k h'(k t) - k^2 t h''(k t) <= 0. So du/dt
changes sign at most once (from + to -): u rises then falls in t, hence in m, and its maximisers
form one interval.

`optimal_batch_size` (NumPy, the reference) scans every integer 1..max_batch_size, vectorised;
`tf_optimal_batch_size` (in the train step) uses the unimodality: three or four stages of 64
evaluations narrow the bracket to the exact integer maximiser (~0.3 ms in a graph for a cap of
4096 or 65536, vs ~4 ms for a full scan of 65536). Both are tested against a brute-force scan
(same u to 1e-12).

Which sigma^2 enters Eq. 7 (`SIGMA_CONVENTIONS`, `eq7_sigma2`; BAMomentum's
`sigma_convention=`, orthogonal to its covariance estimator):

- "paper": sigma^2 = f^T Sigma f, the per-example variance of the step, as in Sec. 3 (Eq. 7
  divides it by m itself). The library default.
- "authors": sigma^2 = f^T Sigma f / |Y_t|, as the authors' code computes it: the variance of
  the mean step over the batch Y_t grown so far, which Eq. 7 then divides by m again. Eq. 7 at
  (m, sigma^2 / |Y_t|) is the paper's Eq. 7 at m |Y_t|, so u is evaluated at batches |Y_t|
  times larger and m* comes out ~|Y_t| times smaller (the batch grows later and less).

`expected_next_state` / `optimal_batch_size` work on NumPy values and validate their inputs, on
any Keras backend (importing this module imports no TensorFlow); `tf_expected_decrease` /
`tf_optimal_batch_size` are the same formulas in float64 TensorFlow ops for BAMomentum's
`tf.function` step (no validation there: callers pass already-checked state); they import
TensorFlow on first use.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
from scipy import special


class _LazyTensorFlow:
    """`tf` for the TF versions below, imported on first use (the module stays TF-free)."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("tensorflow"), name)


tf = _LazyTensorFlow()

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


SIGMA_CONVENTIONS = ("paper", "authors")


def check_sigma_convention(convention: str) -> str:
    """`convention` if it is one of SIGMA_CONVENTIONS, else ValueError naming it."""
    if convention not in SIGMA_CONVENTIONS:
        raise ValueError(f"`sigma_convention` must be one of {SIGMA_CONVENTIONS}. "
                         f"Received: sigma_convention={convention!r}")
    return convention


def eq7_sigma2(sigma2, batch_size, convention: str = "paper"):
    """The sigma^2 that enters Eq. 7 from f^T Sigma f of the batch Y_t (|Y_t| = batch_size):
    unchanged ("paper") or divided by |Y_t| ("authors"); module docstring. NumPy or TF values."""
    if check_sigma_convention(convention) == "authors":
        return sigma2 / batch_size
    return sigma2


def _check_finite(name: str, value) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite. Received: {name}={value!r}")
    return arr


def _normal_loss(x: np.ndarray) -> np.ndarray:
    """L(x) = E[(Z - x)^+] = phi(x) - x * Q(x) for x >= 0 (0 where it underflows)."""
    phi = np.exp(-0.5 * x * x) * _INV_SQRT_2PI
    q = 0.5 * special.erfc(x / _SQRT_2)
    return np.maximum(phi - x * q, 0.0)


def _decrease_terms(s, loss_floor, mu, sigma, m, learning_rate):
    """Validated inputs -> (c, tau, expected decrease s - E_m[s']) as broadcast arrays."""
    s = _check_finite("s", s)
    loss_floor = _check_finite("loss_floor", loss_floor)
    mu = _check_finite("mu", mu)
    sigma = _check_finite("sigma", sigma)
    m = _check_finite("m", m)
    lr = _check_finite("learning_rate", learning_rate)
    if np.any(sigma < 0):
        raise ValueError(f"`sigma` must be >= 0. Received: sigma={sigma!r}")
    if np.any(m < 1):
        raise ValueError(f"`m` (batch size) must be >= 1. Received: m={m!r}")
    if np.any(lr <= 0):
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={lr!r}")
    c = s - loss_floor - lr * mu
    tau = lr * sigma / np.sqrt(m)
    positive = tau > 0
    a = np.abs(c) / np.where(positive, tau, 1.0)  # only used where tau > 0
    noise = np.where(positive, 2.0 * tau * _normal_loss(a), 0.0)
    decrease = lr * mu - 2.0 * np.maximum(-c, 0.0) - noise
    return c, tau, noise, decrease


def expected_next_state(s, loss_floor, mu, sigma, m, learning_rate) -> np.ndarray:
    """Eq. 7: E_m[s'] for batch sizes `m` (broadcast over all arguments, NumPy float64).

    Args:
        s: current loss on the batch being grown.
        loss_floor: S*, the lowest loss the model can reach (0 for a network that can fit its
            training set).
        mu: mean of the moving step, f . mu_p (f . f for SGD).
        sigma: sqrt(f^T Sigma f) >= 0, per-example standard deviation of the moving step.
        m: batch size(s) >= 1.
        learning_rate: eta > 0.
    """
    c, _, noise, _ = _decrease_terms(s, loss_floor, mu, sigma, m, learning_rate)
    return np.asarray(loss_floor, np.float64) + np.abs(c) + noise


def expected_decrease(s, loss_floor, mu, sigma, m, learning_rate) -> np.ndarray:
    """s - E_m[s'] (the numerator of Eq. 8) without cancellation; same arguments as Eq. 7."""
    return _decrease_terms(s, loss_floor, mu, sigma, m, learning_rate)[3]


def utility(s, loss_floor, mu, sigma, m, learning_rate) -> np.ndarray:
    """Eq. 8: u(m) = (s - E_m[s']) / m."""
    dec = expected_decrease(s, loss_floor, mu, sigma, m, learning_rate)
    return dec / np.asarray(m, np.float64)


def optimal_batch_size(s, loss_floor, mu, sigma, learning_rate, max_batch_size) -> int:
    """Eq. 9: the integer m in [1, max_batch_size] maximising u(m) (smallest m on ties)."""
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, (int, np.integer))
        or max_batch_size < 1
    ):
        raise ValueError(
            f"`max_batch_size` must be an integer >= 1. Received: max_batch_size={max_batch_size!r}"
        )
    for name, value in (
        ("s", s),
        ("loss_floor", loss_floor),
        ("mu", mu),
        ("sigma", sigma),
        ("learning_rate", learning_rate),
    ):
        if np.ndim(value) != 0:
            raise ValueError(f"`{name}` must be a scalar. Received: {name}={value!r}")
    m = np.arange(1, int(max_batch_size) + 1, dtype=np.float64)
    u = utility(s, loss_floor, mu, sigma, m, learning_rate)
    return int(np.argmax(u)) + 1


# ---------------------------------------------------------------------------------------------
# TensorFlow versions (float64, graph-friendly, no validation).
# ---------------------------------------------------------------------------------------------


def f64(t):
    """A float64 tensor; Python numbers are converted directly (no float32 round trip)."""
    if isinstance(t, (int, float, np.ndarray, np.generic)):
        return tf.constant(t, dtype=tf.float64)
    return tf.cast(t, tf.float64)


def _tf_normal_loss(x):
    phi = tf.exp(-0.5 * x * x) * _INV_SQRT_2PI
    q = 0.5 * tf.math.erfc(x / _SQRT_2)
    return tf.maximum(phi - x * q, 0.0)


def tf_expected_decrease(s, loss_floor, mu, sigma, m, learning_rate):
    """s - E_m[s'] in float64 TF ops; broadcasts like `expected_decrease`."""
    s, loss_floor, mu, sigma, m, lr = map(f64, (s, loss_floor, mu, sigma, m, learning_rate))
    c = s - loss_floor - lr * mu
    tau = lr * sigma / tf.sqrt(m)
    positive = tau > 0
    a = tf.abs(c) / tf.where(positive, tau, tf.ones_like(tau))
    noise = tf.where(positive, 2.0 * tau * _tf_normal_loss(a), tf.zeros_like(tau))
    return lr * mu - 2.0 * tf.maximum(-c, 0.0) - noise


def tf_expected_next_state(s, loss_floor, mu, sigma, m, learning_rate):
    """Eq. 7 in float64 TF ops."""
    return f64(s) - tf_expected_decrease(s, loss_floor, mu, sigma, m, learning_rate)


_GRID = 64  # points per refinement stage of tf_optimal_batch_size


def _refinement_stages(cap: int) -> int:
    """Stages until the bracket [lo, hi] holds at most _GRID integers (static)."""
    width, stages = cap, 1
    while width > _GRID:
        width = math.ceil(2 * (width - 1) / (_GRID - 1)) + 1
        stages += 1
    return stages


def tf_optimal_batch_size(s, loss_floor, mu, sigma, learning_rate, max_batch_size: int):
    """Eq. 9 in TF ops: int64 scalar m* in [1, max_batch_size] (static Python int cap).

    u is unimodal in m (module docstring), so instead of scanning every m this evaluates 64
    evenly spaced m in a bracket, keeps [left neighbour, right neighbour] of the first best
    point (which holds the smallest maximiser) and repeats until the bracket has <= 64
    integers: ~3 stages of 64 evaluations for a cap of 4096, 4 for 65536. Non-finite inputs
    give m* = max_batch_size (callers check finiteness before trusting it).
    """
    cap = int(max_batch_size)
    lo = tf.constant(1, tf.int64)
    hi = tf.constant(cap, tf.int64)
    steps = tf.range(_GRID, dtype=tf.float64) / (_GRID - 1)
    best = hi
    for _ in range(_refinement_stages(cap)):
        grid = lo + tf.cast(tf.round(steps * tf.cast(hi - lo, tf.float64)), tf.int64)
        m = tf.cast(grid, tf.float64)
        u = tf_expected_decrease(s, loss_floor, mu, sigma, m, learning_rate) / m
        u = tf.where(tf.math.is_nan(u), tf.constant(-np.inf, tf.float64), u)
        index = tf.range(_GRID, dtype=tf.int32)
        first = tf.reduce_min(tf.where(u >= tf.reduce_max(u), index, _GRID - 1))
        best = tf.gather(grid, first)
        lo = tf.gather(grid, tf.maximum(first - 1, 0))
        hi = tf.gather(grid, tf.minimum(first + 1, _GRID - 1))
    all_bad = tf.reduce_all(tf.math.is_inf(u) & (u < 0))
    return tf.where(all_bad, tf.constant(cap, tf.int64), best)
