"""Per-example gradient statistics of BA-Momentum: one estimator of sigma^2 = f^T Sigma f per mode.

BA-Momentum (ba_momentum.py) needs, for the batch Y_t being grown, the mean gradient f and the
per-example variance of the moving step, sigma_t^2 = f^T Sigma_t f, with Sigma_t the covariance
of the per-example gradients g_j over Y_t (seed 002, Eqs. 1 and 4):

    f = (1/|Y_t|) sum_j g_j,   Sigma_t = (1/(|Y_t| - 1)) sum_j (g_j - f)(g_j - f)^T     (Eq. 4)

Each class below is one value of `BAMomentum(covariance=...)`, behind one interface:

    est = covariance_estimator("projection", fd_step=3e-4)
    est.build(optimizer, variables)            # its accumulators (in BAMomentum.build)
    stats = est.chunk_statistics(model, loss_fn, x, y)   # this replica's ChunkStatistics
    sums = est.local_sums(stats)               # extra per-replica sums, all-reduced with f
    sigma2, updates = est.sigma2(stats, reduced_sums, f, ff, count, dof, all_reduce)
    est.accumulators()                         # what a new batch resets to zero

- "projection" (`ProjectionCovariance`, default, fast): sigma^2 is the variance over examples
  of the projections p_j = f . g_j (Eq. 4 projected on f). After the ordinary backward pass
  (which already yields dl_j/dz_j, the gradient of each example's loss with respect to its own
  model output z_j), one extra forward pass at theta + eps * f -- under `keras.StatelessScope`,
  with the dropout seeds of the main pass -- gives p_j = dl_j/dz_j . (z_j(theta + eps f) -
  z_j(theta)) / eps. Differencing the outputs, not the losses, keeps float32 round-off out of
  the low-loss regime; eps moves theta by `fd_step` of its norm. Cost: one forward pass per
  chunk. For chunk k of Y_t the projections use f_k, the mean over Y_t after chunk k, and
  sigma^2 = |f|^2 * sum_k sum_{j in k} (p_j - |f_k|^2)^2 / |f_k|^2 / (|Y_t| - 1): on the first
  chunk of every batch this is f^T Sigma_t f exactly (up to the finite difference), later
  chunks reuse the direction they were projected on. It estimates the FULL form f^T Sigma f.
- "diagonal" (`DiagonalCovariance`, exact, the paper's App. C default): accumulates sum g_j
  and sum g_j**2 per coordinate; sigma^2 = sum_i f_i^2 Sigma_ii. Both sums come from one
  batched pass for Dense / Conv2D networks (ba_sum_grad_squared.py); other layers with weights
  and trainable BatchNormalization fall back, with a warning naming them, to per-example
  gradients by `tf.vectorized_map` (~3x a plain step).
- "full" (`FullCovariance`, exact): as "diagonal" but accumulates sum_j g_j g_j^T (D x D, D =
  number of trainable parameters, limited to FULL_COVARIANCE_MAX_PARAMS) and uses f^T Sigma f.

Measured on the seed-002 CNN on Fashion-MNIST (chunks of 32), sqrt(f^T Sigma f) is 22x its
diagonal approximation at initialisation and 30-47x after 400-2000 momentum-SGD steps, so
"diagonal" and "full"/"projection" can choose very different batch sizes there. "projection"
is within 1% of the exact f^T Sigma f on first chunks there, and its decisions match "full"
(tests/optimizers/test_ba_momentum.py).

Dropout: "projection" repeats the main pass's masks in its perturbed pass; the exact modes give
every example its own masks (the batched pass draws them for the whole chunk; the per-example
path offsets the seeds by the example's index). Both rely on the model's randomness flowing
through Keras SeedGenerators (true for Keras layers). The per-example path sees each example
alone, so batch-coupled layers (BatchNorm) behave as with a batch of 1 and their moving
statistics are not updated; use "projection" for them. Weight regularisers are added to
every example's loss; activity regularisers / `add_loss` terms are ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable

import keras

from keras_largebatch.optimizers.ba_math import tf  # TensorFlow, imported on first use
from keras_largebatch.optimizers.ba_sum_grad_squared import (
    batched_sum_grad_squared,
    uncovered_layers,
)

COVARIANCE_MODES = ("projection", "diagonal", "full")
FULL_COVARIANCE_MAX_PARAMS = 4096
_SEED_STRIDE = 1_000_003  # per-example offset of dropout seeds in the exact modes


@dataclasses.dataclass
class ChunkStatistics:
    """Sums over this replica's part of one chunk (examples j), before any all-reduce.

    loss_sum: sum_j l_j (float32 scalar); count: number of examples (float32 scalar);
    grad_sum: sum_j g_j per trainable variable; sq_sum: sum_j g_j**2 ("diagonal");
    outer_sum: sum_j vec(g_j) vec(g_j)^T ("full"); project: ("projection") a function
    (direction f per variable) -> sum_j (f . g_j - f . f)**2 on this replica;
    y_pred: the model outputs for the chunk (for metrics).
    """

    loss_sum: tf.Tensor
    count: tf.Tensor
    grad_sum: list
    sq_sum: list | None = None
    outer_sum: tf.Tensor | None = None
    project: Callable | None = None
    y_pred: object = None


def _f64(t):
    return tf.cast(t, tf.float64)


def _per_example(loss_fn, y, y_pred, n):
    losses = loss_fn(y, y_pred)
    return tf.reshape(tf.cast(losses, tf.float32), [n])


def _batch_size(x):
    return tf.shape(tf.nest.flatten(x)[0])[0]


def _regularization(variables):
    """(R, dR/dvariables) of the weight regularisers, or (None, None)."""
    regs = [(v, v.regularizer) for v in variables if getattr(v, "regularizer", None)]
    if not regs:
        return None, None
    with tf.GradientTape() as tape:
        total = tf.add_n([tf.cast(r(v), tf.float32) for v, r in regs])
    grads = tape.gradient(total, variables)
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
    return total, grads


@contextlib.contextmanager
def _float32_compute(model):
    """Inside, every layer of `model` computes in float32 (yields whether any did not before).

    Under a mixed dtype policy the projection's finite difference z(theta + eps f) - z(theta)
    is taken between two float32 passes: in bfloat16 its round-off (2^-8 relative) would swamp
    a difference of ~fd_step relative. Layers are switched while tracing only.
    """
    layers = [layer for layer in model._flatten_layers(include_self=True)  # noqa: SLF001
              if layer.dtype_policy.compute_dtype != "float32"]
    saved = [layer.dtype_policy for layer in layers]
    for layer in layers:
        layer.dtype_policy = "float32"
    try:
        yield bool(layers)
    finally:
        for layer, policy in zip(layers, saved):
            layer.dtype_policy = policy


class CovarianceEstimator:
    """The common interface; subclasses implement one `covariance=` mode."""

    mode = ""

    def build(self, optimizer: keras.optimizers.Optimizer, variables) -> None:
        """Create this mode's accumulators with `optimizer.add_variable` (none by default).

        Called by `BAMomentum.build` right after the per-variable gradient sums.
        """

    def build_scalars(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Create the scalar sum of "projection" (called among `BAMomentum.build`'s scalars).

        Every mode creates it, at the same place, so the optimizer's variable list -- and so
        its checkpoints -- have one layout in all modes; only `ProjectionCovariance` uses it.
        """
        self.projection_ssd = optimizer.add_variable((), name="projection_ssd", dtype="float64")

    def accumulators(self) -> list:
        """The variables a new batch Y_t starts from zero."""
        return [self.projection_ssd]

    def chunk_statistics(self, model: keras.Model, loss_fn: Callable, x, y) -> ChunkStatistics:
        """This replica's statistics of one chunk for `BAMomentum.accumulate`.

        `loss_fn(y_true, y_pred)` must return one loss per example (a Keras loss built with
        `reduction=None`, or a loss function such as
        `keras.losses.sparse_categorical_crossentropy`).
        """
        if isinstance(loss_fn, keras.losses.Loss) and loss_fn.reduction not in (None, "none"):
            raise ValueError(
                "`loss_fn` must return one loss per example: build it with reduction=None. "
                f"Received: reduction={loss_fn.reduction!r}"
            )
        variables = model.trainable_variables
        n = _batch_size(x)
        n_f = tf.cast(n, tf.float32)
        reg, reg_grads = _regularization(variables)
        return self._statistics(model, loss_fn, x, y, variables, n, n_f, reg, reg_grads)

    def _statistics(self, model, loss_fn, x, y, variables, n, n_f, reg, reg_grads):
        raise NotImplementedError

    def local_sums(self, stats: ChunkStatistics) -> list:
        """Per-replica sums beyond loss, count and gradient, all-reduced in the same call."""
        return []

    def sigma2(self, stats, sums, f, ff, count, dof, all_reduce):
        """(sigma^2 = f^T Sigma_t f over Y_t with this chunk, [(variable, new value)]).

        `sums`: the all-reduced `local_sums(stats)`; `f`: the mean gradient over Y_t per
        variable; `ff` = f . f, `count` = |Y_t| and `dof` = max(|Y_t| - 1, 1) (float64);
        `all_reduce`: sums a list of tensors over the replicas.
        """
        raise NotImplementedError


class ProjectionCovariance(CovarianceEstimator):
    """covariance="projection": f^T Sigma f from one extra forward pass at theta + eps f."""

    mode = "projection"

    def __init__(self, fd_step: float = 3e-4):
        self.fd_step = fd_step

    def _statistics(self, model, loss_fn, x, y, variables, n, n_f, reg, reg_grads):
        fd_step = self.fd_step
        # Read the non-trainable state (dropout seeds, BN statistics) before the main pass
        # advances it, so the perturbed pass below repeats the same dropout masks.
        snapshot = [tf.identity(v.value) for v in model.non_trainable_variables]
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            per_ex = _per_example(loss_fn, y, y_pred, n)
            total = tf.reduce_sum(per_ex)
        grads, dl_dz = tape.gradient(total, (variables, y_pred))
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        loss_sum = total
        if reg is not None:
            grads = [g + n_f * r for g, r in zip(grads, reg_grads)]
            loss_sum = loss_sum + n_f * reg

        def project(direction):
            ff = tf.add_n([tf.reduce_sum(tf.square(d)) for d in direction])
            theta_norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(v.value)) for v in variables]))
            safe_ff = tf.where(ff > 0, ff, 1.0)
            eps = fd_step * tf.maximum(theta_norm, 1.0) / tf.sqrt(safe_ff)
            mapping = [
                (v, v.value + tf.cast(eps * d, v.dtype)) for v, d in zip(variables, direction)
            ] + list(zip(model.non_trainable_variables, snapshot))
            base = list(zip(model.non_trainable_variables, snapshot))
            with _float32_compute(model) as mixed:
                with keras.StatelessScope(state_mapping=mapping):
                    y_pert = model(x, training=True)
                if mixed:  # differences of 16-bit outputs would be mostly round-off
                    with keras.StatelessScope(state_mapping=base):
                        y_base = model(x, training=True)
            y_ref = y_base if mixed else y_pred
            p = tf.zeros([n], tf.float32)
            for g_z, z0, z1 in zip(
                tf.nest.flatten(dl_dz), tf.nest.flatten(y_ref), tf.nest.flatten(y_pert)
            ):
                if g_z is None:
                    continue
                prod = tf.cast(g_z, tf.float32) * tf.cast(z1 - z0, tf.float32)
                p += tf.reduce_sum(tf.reshape(prod, [n, -1]), axis=1)
            p = p / eps
            if reg is not None:
                p += tf.add_n([tf.reduce_sum(d * r) for d, r in zip(direction, reg_grads)])
            ssd = tf.reduce_sum(tf.square(p - ff))
            return tf.where(ff > 0, ssd, 0.0)

        return ChunkStatistics(
            loss_sum=loss_sum, count=n_f, grad_sum=grads, project=project, y_pred=y_pred
        )

    def sigma2(self, stats, sums, f, ff, count, dof, all_reduce):
        ssd = all_reduce(stats.project(f))
        chunk_unit_ssd = tf.where(ff > 0, _f64(ssd) / tf.where(ff > 0, ff, 1.0), 0.0)
        proj_ssd = self.projection_ssd + chunk_unit_ssd
        return ff * proj_ssd / dof, [(self.projection_ssd, proj_ssd)]


class _ExactCovariance(CovarianceEstimator):
    """Exact per-example gradients, vectorised over the examples of the chunk."""

    def _statistics(self, model, loss_fn, x, y, variables, n, n_f, reg, reg_grads):
        # Each example gets its own dropout masks: its seeds are offset by its index
        # (vectorized_map would otherwise hoist the seed and give every example the same
        # mask); the real seed states then advance once, as after one batched call.
        seeds = [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]

        def one_example(example):
            xi, yi, j = example
            xi = tf.nest.map_structure(lambda t: t[None], xi)
            yi = tf.nest.map_structure(lambda t: t[None], yi)
            mapping = [
                (v, v.value + tf.cast(tf.stack([j * _SEED_STRIDE, 0]), v.dtype)) for v in seeds
            ]
            with keras.StatelessScope(state_mapping=mapping):
                with tf.GradientTape() as tape:
                    pred = model(xi, training=True)
                    loss = tf.reshape(_per_example(loss_fn, yi, pred, 1), [])
                g = tape.gradient(loss, variables)
            g = [tf.zeros_like(v) if gi is None else gi for gi, v in zip(g, variables)]
            return loss, g, tf.nest.map_structure(lambda t: t[0], pred)

        index = tf.range(n, dtype=tf.int64)
        losses, per_ex_grads, y_pred = tf.vectorized_map(one_example, (x, y, index))
        for v in seeds:
            v.assign(v.value + tf.constant([0, 1], v.dtype))
        loss_sum = tf.reduce_sum(losses)
        if reg is not None:
            per_ex_grads = [g + r[None] for g, r in zip(per_ex_grads, reg_grads)]
            loss_sum = loss_sum + n_f * reg
        grad_sum = [tf.reduce_sum(g, axis=0) for g in per_ex_grads]
        stats = ChunkStatistics(loss_sum=loss_sum, count=n_f, grad_sum=grad_sum, y_pred=y_pred)
        self._second_moments(stats, per_ex_grads, n)
        return stats

    def _second_moments(self, stats, per_ex_grads, n):
        """Fill this mode's field of `stats` from the per-example gradients [n, ...]."""
        raise NotImplementedError


class DiagonalCovariance(_ExactCovariance):
    """covariance="diagonal": exact per-coordinate variances, sigma^2 = sum_i f_i^2 Sigma_ii.

    `per_example=True` always takes the per-example path (the reference the batched sums are
    tested against); by default only models with layers the batched pass does not cover do.
    """

    mode = "diagonal"

    def __init__(self, per_example: bool = False):
        self.per_example = per_example

    def _statistics(self, model, loss_fn, x, y, variables, n, n_f, reg, reg_grads):
        uncovered = [] if self.per_example else uncovered_layers(model, variables)
        if uncovered:
            warnings.warn(f"covariance='diagonal': no batched formula for {', '.join(uncovered)}"
                          "; using slower per-example gradients (BatchNormalization then sees "
                          "each example alone).", stacklevel=4)
        if self.per_example or uncovered:
            return super()._statistics(model, loss_fn, x, y, variables, n, n_f, reg, reg_grads)
        sums = batched_sum_grad_squared(model, lambda p: _per_example(loss_fn, y, p, n), x,
                                        variables, n)
        loss_sum, grad_sum, sq_sum = sums.loss_sum, sums.grad_sum, sums.sq_sum
        if reg is not None:  # every g_j gains r: sum_j (g_j + r)^2 = S2 + 2 r S1 + n r^2
            sq_sum = [q + 2.0 * r * g + n_f * tf.square(r)
                      for q, g, r in zip(sq_sum, grad_sum, reg_grads)]
            grad_sum = [g + n_f * r for g, r in zip(grad_sum, reg_grads)]
            loss_sum = loss_sum + n_f * reg
        return ChunkStatistics(loss_sum=loss_sum, count=n_f, grad_sum=grad_sum, sq_sum=sq_sum,
                               y_pred=sums.y_pred)

    def build(self, optimizer, variables):
        self.sq_sums = optimizer.add_optimizer_variables(variables, "grad_sq_sum")

    def accumulators(self):
        return self.sq_sums + super().accumulators()

    def _second_moments(self, stats, per_ex_grads, n):
        stats.sq_sum = [tf.reduce_sum(tf.square(g), axis=0) for g in per_ex_grads]

    def local_sums(self, stats):
        return [tf.cast(g, tf.float32) for g in stats.sq_sum]

    def sigma2(self, stats, sums, f, ff, count, dof, all_reduce):
        sq_sums = [s + tf.cast(q, s.dtype) for s, q in zip(self.sq_sums, sums)]
        sigma2 = (
            tf.add_n(
                [
                    tf.reduce_sum(
                        tf.square(_f64(fi)) * tf.maximum(_f64(q) - count * tf.square(_f64(fi)), 0.0)
                    )
                    for fi, q in zip(f, sq_sums)
                ]
            )
            / dof
        )
        return sigma2, list(zip(self.sq_sums, sq_sums))


class FullCovariance(_ExactCovariance):
    """covariance="full": exact f^T Sigma f from sum_j g_j g_j^T (small models only)."""

    mode = "full"

    def build(self, optimizer, variables):
        size = sum(math.prod(v.shape) for v in variables)
        if size > FULL_COVARIANCE_MAX_PARAMS:
            raise ValueError(
                f"covariance='full' stores a {size}x{size} matrix; it is limited to models "
                f"with <= {FULL_COVARIANCE_MAX_PARAMS} parameters. Use "
                "covariance='projection' (same quantity, estimated) or 'diagonal'."
            )
        self.outer_sum = optimizer.add_variable(
            (size, size), name="grad_outer_sum", dtype="float32"
        )

    def accumulators(self):
        return [self.outer_sum] + super().accumulators()

    def _second_moments(self, stats, per_ex_grads, n):
        flat = tf.concat([tf.reshape(tf.cast(g, tf.float32), [n, -1]) for g in per_ex_grads], 1)
        stats.outer_sum = tf.matmul(flat, flat, transpose_a=True)

    def local_sums(self, stats):
        return [stats.outer_sum]

    def sigma2(self, stats, sums, f, ff, count, dof, all_reduce):
        outer = self.outer_sum + sums[0]
        fvec = tf.concat([tf.reshape(_f64(fi), [-1]) for fi in f], 0)
        quad = tf.reduce_sum(fvec * tf.linalg.matvec(_f64(outer), fvec))
        return tf.maximum(quad - count * tf.square(ff), 0.0) / dof, [(self.outer_sum, outer)]



def covariance_estimator(covariance: str, *, fd_step: float = 3e-4) -> CovarianceEstimator:
    """The estimator for `covariance` (one of COVARIANCE_MODES); `fd_step` is for "projection"."""
    if covariance not in COVARIANCE_MODES:
        raise ValueError(
            f"`covariance` must be one of {COVARIANCE_MODES}. Received: covariance={covariance!r}"
        )
    if covariance == "projection":
        return ProjectionCovariance(fd_step=fd_step)
    return {"diagonal": DiagonalCovariance, "full": FullCovariance}[covariance]()


def compute_chunk_statistics(
    model: keras.Model,
    loss_fn: Callable,
    x,
    y,
    *,
    covariance: str = "projection",
    fd_step: float = 3e-4,
) -> ChunkStatistics:
    """This replica's statistics of one chunk in mode `covariance` (no optimizer needed)."""
    return covariance_estimator(covariance, fd_step=fd_step).chunk_statistics(model, loss_fn, x, y)
