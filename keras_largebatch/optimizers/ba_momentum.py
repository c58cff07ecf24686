"""BA-Momentum and BA-SGD (seed 002, Algorithm 1) as a Keras 3 optimizer with a chunk protocol.

Algorithm 1 as we read it (the printed pseudo-code is garbled; "J" is an arrow, "八" a
comment marker, and the paper reuses m for both the velocity and the batch size):

    procedure BA-MOMENTUM(X, theta, eta, rho, M, m0)
      while M > 0:                                    # M: budget of training samples
        Y_t <- {}
        repeat
          draw Z from X \\ Y_t with |Z| = m0;  Y_t <- Y_t u Z
          f, Sigma_t <- mean and covariance of per-example gradients on Y_t    (Eqs. 1, 4)
          mu_p_t     <- rho * mu_p_{t-1} + f                                    (Eq. 15)
          s_t <- F(theta | Y_t);  mu_t <- f . mu_p_t;  sigma_t <- sqrt(f^T Sigma_t f)
          m*  <- argmax_m u(m, s_t)   with S* user-specified                     (Eqs. 7-9)
        until |Y_t| >= min(m*, |X|)
        v_t <- rho * v_{t-1} + eta * f;   theta <- theta - v_t                   (Eqs. 10-11)
        M <- M - |Y_t|;  t <- t + 1
      return theta

mu_p_{t-1} stays fixed while Y_t grows; mu_p_t with the final f is stored at the update. With
a constant eta, v = eta * mu_p; both are kept so learning-rate schedules stay faithful. The state
s_t is the mean loss over Y_t (the moving step is Delta s = -Delta F / eta, Eqs. 5-6). We also
cap |Y_t| at `max_batch_size` (the authors' code does the same). rho = 0 is BA-SGD.

Two decisions the paper leaves open:

- mu_t <= 0 (possible only with momentum: the step rho v + eta f points uphill). Then
  s - E_m[s'] < 0 for every m, and Eq. 9 picks the largest m only because a loss increase
  divided by m looks smaller per sample; no batch size makes the step descend. We set m* = 1
  (update at once). For mu_t > 0 Eq. 9 is followed literally, including c < 0 (batch loss at
  or below S* + eta mu), where growing the batch is what makes s_t trustworthy. Without this
  rule the noiseless least-squares test problem spends up to max_batch_size samples on updates
  during momentum overshoot. (The authors' code sets m* = 1 whenever a(m=1) > 5, which covers
  the same case when the noise is small.)
- With one example (|Y_t| = 1) Sigma_t is undefined: m* is raised to 2.

The authors' code divides f^T Sigma f by |Y_t| before Eq. 7 divides by m again; we follow the
paper (Eq. 7 with sigma^2 = f^T Sigma_t f).

Protocol (all graph-friendly; call inside `tf.function` and, with a strategy, `strategy.run`):

    stats = opt.compute_chunk_statistics(model, loss_fn, x, y)  # this replica's chunk part
    opt.accumulate(stats)      # all-reduces the chunk sums once, grows Y_t, recomputes m*
    ready = opt.should_update()    # |Y_t| >= min(m*, max_batch_size, dataset_size)
    opt.apply_accumulated(ready)   # where ready: v, theta, mu_p; reset the accumulators

Pass the condition instead of wrapping the call in `tf.cond`: under MirroredStrategy the
variable updates go through `merge_call`, which TensorFlow forbids inside `tf.cond`.

`keras_largebatch.optimizers.ba_model.ba_chunk_step` wraps exactly this; `BAModel` gives
`model.fit` users the same behaviour.

Per-example statistics (`covariance=`):

- "projection" (default, fast): sigma^2 = f^T Sigma f is the variance over examples of the
  projections p_j = f . g_j (Eq. 4 projected on f). After the ordinary backward pass (which
  already yields dl_j/dz_j, the gradient of each example's loss with respect to its own model
  output z_j), one extra forward pass at theta + eps * f -- under `keras.StatelessScope`, with
  the dropout seeds of the main pass -- gives p_j = dl_j/dz_j . (z_j(theta + eps f) -
  z_j(theta)) / eps. Differencing the outputs, not the losses, keeps float32 round-off out of
  the low-loss regime; eps moves theta by `fd_step` of its norm. Cost: one forward pass per
  chunk. For chunk k of Y_t the projections use f_k, the mean over Y_t after chunk k, and
  sigma^2 = |f|^2 * sum_k sum_{j in k} (p_j - |f_k|^2)^2 / |f_k|^2 / (|Y_t| - 1): on the first
  chunk of every batch this is f^T Sigma_t f exactly (up to the finite difference), later chunks
  reuse the direction they were projected on. It estimates the FULL form f^T Sigma f.
- "diagonal" (exact, the paper's App. C default and the authors' `use_diag=True`): per-example
  gradients by `tf.vectorized_map` (one vectorised pass, no Python loop); accumulates sum g_j
  and sum g_j**2 per coordinate; sigma^2 = sum_i f_i^2 Sigma_ii. ~3-4x the cost of a plain step.
- "full" (exact): as "diagonal" but accumulates sum_j g_j g_j^T (D x D, D = number of trainable
  parameters, limited to FULL_COVARIANCE_MAX_PARAMS) and uses f^T Sigma f.

Measured on the seed-002 CNN on Fashion-MNIST (chunks of 32), sqrt(f^T Sigma f) is 22x its
diagonal approximation at initialisation and 30-47x after 400-2000 momentum-SGD steps, so
"diagonal" and "full"/"projection" can choose very different batch sizes there. "projection"
is within 1% of the exact f^T Sigma f on first chunks there, and its decisions match
"full" (test_ba_momentum.py).

State (velocity, mu_p, accumulated sums, loss sum, example count, last m*, mu, sigma, s, size of
the last update) lives in optimizer variables, so a `tf.train.Checkpoint` of the optimizer
resumes the same trajectory, including a half-grown batch.

Dropout: "projection" repeats the main pass's masks in its perturbed pass; the exact modes give
every example its own masks (seeds offset by the example's index). Both rely on the model's
randomness flowing through Keras SeedGenerators (true for Keras layers).

Limits: the exact modes see each example alone, so batch-coupled layers (BatchNorm) behave as
with a batch of 1 and their moving statistics are not updated; use "projection" for them.
Weight regularisers are added to every example's loss; activity regularisers / `add_loss`
terms are ignored. Sample weights and mixed precision loss scaling are not supported. Keras
does not put dropout seed states in a model's `tf.train.Checkpoint`: checkpoint them apart
(`model.non_trainable_variables`) for a bit-identical resume of a model with dropout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable

import keras
import tensorflow as tf

from keras_largebatch.optimizers.ba_math import tf_optimal_batch_size

COVARIANCE_MODES = ("projection", "diagonal", "full")
FULL_COVARIANCE_MAX_PARAMS = 4096
_SEED_STRIDE = 1_000_003  # per-example offset of dropout seeds in the exact modes
_UNSUPPORTED_BASE_ARGS = (
    "gradient_accumulation_steps",
    "use_ema",
    "loss_scale_factor",
    "weight_decay",
)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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


def compute_chunk_statistics(
    model: keras.Model,
    loss_fn: Callable,
    x,
    y,
    *,
    covariance: str = "projection",
    fd_step: float = 3e-4,
) -> ChunkStatistics:
    """Per-replica statistics of one chunk for `BAMomentum.accumulate`.

    `loss_fn(y_true, y_pred)` must return one loss per example (a Keras loss built with
    `reduction=None`, or a loss function such as `keras.losses.sparse_categorical_crossentropy`).
    """
    if covariance not in COVARIANCE_MODES:
        raise ValueError(
            f"`covariance` must be one of {COVARIANCE_MODES}. Received: covariance={covariance!r}"
        )
    if isinstance(loss_fn, keras.losses.Loss) and loss_fn.reduction not in (None, "none"):
        raise ValueError(
            "`loss_fn` must return one loss per example: build it with reduction=None. "
            f"Received: reduction={loss_fn.reduction!r}"
        )
    variables = model.trainable_variables
    n = _batch_size(x)
    n_f = tf.cast(n, tf.float32)
    reg, reg_grads = _regularization(variables)

    if covariance == "projection":
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
            with keras.StatelessScope(state_mapping=mapping):
                y_pert = model(x, training=True)
            p = tf.zeros([n], tf.float32)
            for g_z, z0, z1 in zip(
                tf.nest.flatten(dl_dz), tf.nest.flatten(y_pred), tf.nest.flatten(y_pert)
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

    # Exact per-example gradients, vectorised over the examples of the chunk. Each example
    # gets its own dropout masks: its seeds are offset by its index (vectorized_map would
    # otherwise hoist the seed and give every example the same mask); the real seed states
    # then advance once, as after one batched call.
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
    if covariance == "diagonal":
        stats.sq_sum = [tf.reduce_sum(tf.square(g), axis=0) for g in per_ex_grads]
    else:
        flat = tf.concat([tf.reshape(tf.cast(g, tf.float32), [n, -1]) for g in per_ex_grads], 1)
        stats.outer_sum = tf.matmul(flat, flat, transpose_a=True)
    return stats


@keras.saving.register_keras_serializable(package="keras_largebatch")
class BAMomentum(keras.optimizers.Optimizer):
    """Batch-adaptive momentum (seed 002): grows each batch until it reaches the size m*.

    Example (model.fit; see `BAModel` for the details):

    ```python
    from keras_largebatch.optimizers import BAModel, BAMomentum
    model = BAModel(build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10))
    model.compile(optimizer=BAMomentum(learning_rate=0.01, momentum=0.9, min_increment=32),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32)          # fit's batch size = one chunk = min_increment
    ```

    Args:
        learning_rate: eta > 0: a float, a `LearningRateSchedule` (stepped per update) or a
            callable.
        momentum: rho in [0, 1); 0 is BA-SGD.
        min_increment: m0 >= 1, the chunk size by which a batch grows (the per-step global
            batch size of the pipeline that feeds the optimizer).
        max_batch_size: cap on the batch of one update, >= min_increment.
        loss_floor: S*, the lowest loss reachable (0 for networks that can fit the training
            set). The batch only grows once the loss noise of a step is comparable to the
            distance s - S*, so a floor far below the reachable loss keeps it at m0.
        covariance: "projection" (fast estimate of f^T Sigma f), "diagonal" (exact per-example
            gradients, diagonal Sigma, as in the paper) or "full" (exact, full Sigma, small
            models only).
        dataset_size: |X|; when given, a batch never grows beyond it.
        fd_step: finite-difference step of "projection", relative to |theta| (or absolute
            when |theta| < 1). On the seed-002 CNN the estimate is within 0.35% of the exact
            f^T Sigma f at 3e-4 (0.2% at 1e-4, 0.8% at 1e-3, 7% at 1e-2).
        **kwargs: Keras optimizer arguments `clipnorm`, `clipvalue`, `global_clipnorm` (applied
            to f). `weight_decay`, `gradient_accumulation_steps`, `use_ema` and
            `loss_scale_factor` are not supported: put an L2 regulariser on the layers
            instead (BA then includes it in every example's loss and gradient).
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        min_increment: int = 32,
        max_batch_size: int = 4096,
        loss_floor: float = 0.0,
        covariance: str = "projection",
        dataset_size: int | None = None,
        fd_step: float = 3e-4,
        name: str | None = None,
        **kwargs,
    ):
        for arg in _UNSUPPORTED_BASE_ARGS:
            if kwargs.get(arg):
                raise ValueError(
                    f"BAMomentum does not support `{arg}` (see the class docstring). "
                    f"Received: {arg}={kwargs[arg]!r}"
                )
            kwargs.pop(arg, None)
        if _is_real(learning_rate):
            if not (math.isfinite(learning_rate) and learning_rate > 0):
                raise ValueError(
                    "`learning_rate` must be a finite float > 0. "
                    f"Received: learning_rate={learning_rate!r}"
                )
            learning_rate = float(learning_rate)
        if not _is_real(momentum) or not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"`momentum` must be a float in [0, 1). Received: momentum={momentum!r}"
            )
        if not _is_int(min_increment) or min_increment < 1:
            raise ValueError(
                "`min_increment` must be an integer >= 1. "
                f"Received: min_increment={min_increment!r}"
            )
        if not _is_int(max_batch_size) or max_batch_size < min_increment:
            raise ValueError(
                "`max_batch_size` must be an integer >= min_increment "
                f"({min_increment}). Received: max_batch_size={max_batch_size!r}"
            )
        if not _is_real(loss_floor) or not math.isfinite(loss_floor):
            raise ValueError(
                f"`loss_floor` must be a finite float. Received: loss_floor={loss_floor!r}"
            )
        if covariance not in COVARIANCE_MODES:
            raise ValueError(
                f"`covariance` must be one of {COVARIANCE_MODES}. "
                f"Received: covariance={covariance!r}"
            )
        if dataset_size is not None and (not _is_int(dataset_size) or dataset_size < 1):
            raise ValueError(
                "`dataset_size` must be None or an integer >= 1. "
                f"Received: dataset_size={dataset_size!r}"
            )
        if not _is_real(fd_step) or not 0 < fd_step < 1:
            raise ValueError(f"`fd_step` must be a float in (0, 1). Received: fd_step={fd_step!r}")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.min_increment = int(min_increment)
        self.max_batch_size = int(max_batch_size)
        self.loss_floor = float(loss_floor)
        self.covariance = covariance
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self.fd_step = float(fd_step)

    # -- variables ------------------------------------------------------------------------

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._velocities, self._momentum_means = [], []
        if self.momentum > 0:
            self._velocities = self.add_optimizer_variables(variables, "velocity")
            self._momentum_means = self.add_optimizer_variables(variables, "momentum_mean")
        self._grad_sums = self.add_optimizer_variables(variables, "grad_sum")
        self._sq_sums = []
        self._outer_sum = None
        if self.covariance == "diagonal":
            self._sq_sums = self.add_optimizer_variables(variables, "grad_sq_sum")
        elif self.covariance == "full":
            size = sum(math.prod(v.shape) for v in variables)
            if size > FULL_COVARIANCE_MAX_PARAMS:
                raise ValueError(
                    f"covariance='full' stores a {size}x{size} matrix; it is limited to models "
                    f"with <= {FULL_COVARIANCE_MAX_PARAMS} parameters. Use "
                    "covariance='projection' (same quantity, estimated) or 'diagonal'."
                )
            self._outer_sum = self.add_variable(
                (size, size), name="grad_outer_sum", dtype="float32"
            )

        def scalar(name, dtype):
            return self.add_variable((), name=name, dtype=dtype)

        self._loss_sum = scalar("loss_sum", "float64")
        self._count = scalar("example_count", "float64")
        self._proj_ssd = scalar("projection_ssd", "float64")
        self._chunks = scalar("chunks_in_batch", "int64")
        self._m_star = scalar("m_star", "int64")
        self._mu = scalar("mu", "float64")
        self._sigma = scalar("sigma", "float64")
        self._state = scalar("s", "float64")
        self._last_batch_size = scalar("last_update_batch_size", "int64")

    def _require_built(self):
        if not self.built:
            raise RuntimeError(
                "BAMomentum is not built: call `optimizer.build(model.trainable_variables)` "
                "(under strategy.scope() when distributed) before the first chunk."
            )

    def _update_vars(self, pairs):
        """Assign (variable, value) pairs from replica or default context (identical values)."""
        pairs = [(v.value if isinstance(v, keras.Variable) else v, val) for v, val in pairs]

        def merge_fn(distribution, pairs):
            for var, val in pairs:
                distribution.extended.update(
                    var, lambda t, x: t.assign(tf.cast(x, t.dtype)), args=(val,), group=False
                )

        tf.__internal__.distribute.interim.maybe_merge_call(
            merge_fn, self._distribution_strategy, pairs
        )

    # -- the chunk protocol -----------------------------------------------------------------

    def compute_chunk_statistics(self, model, loss_fn, x, y) -> ChunkStatistics:
        """This replica's statistics of one chunk, in this optimizer's covariance mode."""
        return compute_chunk_statistics(
            model, loss_fn, x, y, covariance=self.covariance, fd_step=self.fd_step
        )

    def accumulate(self, stats: ChunkStatistics):
        """Add one chunk to the batch Y_t being grown and recompute s, mu, sigma and m*.

        Call in replica context (inside `strategy.run`, or with no strategy). The chunk sums
        are all-reduced across replicas here, once; `stats` must not be reduced before.
        Raises (at run time, before any state is written) if the loss or gradient is not finite.
        Returns the all-reduced (loss sum, example count) of this chunk (float32 scalars).
        """
        self._require_built()
        ctx = tf.distribute.get_replica_context()
        if ctx is None:
            raise RuntimeError("BAMomentum.accumulate must run in replica context (strategy.run).")
        n_grads = len(stats.grad_sum)
        local = [tf.cast(stats.loss_sum, tf.float32), tf.cast(stats.count, tf.float32)]
        local += [tf.cast(g, tf.float32) for g in stats.grad_sum]
        if self.covariance == "diagonal":
            local += [tf.cast(g, tf.float32) for g in stats.sq_sum]
        elif self.covariance == "full":
            local.append(stats.outer_sum)
        reduced = self._all_reduce(ctx, local)
        chunk_loss, chunk_count = reduced[0], reduced[1]
        chunk_grads = reduced[2 : 2 + n_grads]
        rest = reduced[2 + n_grads :]

        f64 = lambda t: tf.cast(t, tf.float64)
        count = self._count + f64(chunk_count)
        loss_sum = self._loss_sum + f64(chunk_loss)
        grad_sums = [gs + tf.cast(g, gs.dtype) for gs, g in zip(self._grad_sums, chunk_grads)]
        count_f = tf.cast(count, tf.float32)
        f = [gs / tf.cast(count_f, gs.dtype) for gs in grad_sums]
        # float32 reductions over the parameters (relative error ~1e-6), scalars in float64.
        ff = f64(tf.add_n([tf.reduce_sum(tf.square(tf.cast(fi, tf.float32))) for fi in f]))
        dof = tf.maximum(count - 1.0, 1.0)
        updates = []

        if self.covariance == "projection":
            ssd = self._all_reduce(ctx, stats.project(f))
            chunk_unit_ssd = tf.where(ff > 0, f64(ssd) / tf.where(ff > 0, ff, 1.0), 0.0)
            proj_ssd = self._proj_ssd + chunk_unit_ssd
            sigma2 = ff * proj_ssd / dof
            updates.append((self._proj_ssd, proj_ssd))
        elif self.covariance == "diagonal":
            sq_sums = [s + tf.cast(q, s.dtype) for s, q in zip(self._sq_sums, rest)]
            sigma2 = (
                tf.add_n(
                    [
                        tf.reduce_sum(
                            tf.square(f64(fi))
                            * tf.maximum(f64(q) - count * tf.square(f64(fi)), 0.0)
                        )
                        for fi, q in zip(f, sq_sums)
                    ]
                )
                / dof
            )
            updates += list(zip(self._sq_sums, sq_sums))
        else:
            outer = self._outer_sum + rest[0]
            fvec = tf.concat([tf.reshape(f64(fi), [-1]) for fi in f], 0)
            quad = tf.reduce_sum(fvec * tf.linalg.matvec(f64(outer), fvec))
            sigma2 = tf.maximum(quad - count * tf.square(ff), 0.0) / dof
            updates.append((self._outer_sum, outer))

        if self.momentum > 0:
            mu = f64(
                tf.add_n(
                    [
                        tf.reduce_sum(tf.cast(fi * (self.momentum * mp.value + fi), tf.float32))
                        for fi, mp in zip(f, self._momentum_means)
                    ]
                )
            )
        else:
            mu = ff
        s = loss_sum / count
        sigma = tf.sqrt(tf.maximum(sigma2, 0.0))

        finite = tf.reduce_all(tf.math.is_finite(tf.stack([s, ff, mu, sigma2])))
        check = tf.debugging.Assert(
            finite,
            [
                "BAMomentum: non-finite loss or gradient while growing the batch of update",
                self._iterations + 1,
                "(chunk",
                self._chunks + 1,
                "of the batch; loss sum",
                loss_sum,
                "|f|^2",
                ff,
                "). The state was not changed; lower the learning rate or check the inputs.",
            ],
            summarize=8,
        )
        with tf.control_dependencies([check]):
            lr = f64(self.learning_rate)
            m_star = tf_optimal_batch_size(s, self.loss_floor, mu, sigma, lr, self.max_batch_size)
            # mu <= 0: the momentum step does not descend, u(m) < 0 for every m and Eq. 9
            # would pick the cap; no batch size makes it descend, so update now (m* = 1).
            m_star = tf.where(mu <= 0, tf.ones_like(m_star), m_star)
            # With one example the covariance is unknown: collect at least one more.
            m_star = tf.where(count < 2.0, tf.maximum(m_star, 2), m_star)
            updates += list(zip(self._grad_sums, grad_sums))
            updates += [
                (self._count, count),
                (self._loss_sum, loss_sum),
                (self._chunks, self._chunks + 1),
                (self._m_star, m_star),
                (self._mu, mu),
                (self._sigma, sigma),
                (self._state, s),
            ]
            self._update_vars(updates)
        return chunk_loss, chunk_count

    @staticmethod
    def _all_reduce(ctx, values):
        """Sum over replicas (skipped with one replica, where it would only copy)."""
        if ctx.num_replicas_in_sync == 1:
            return values
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)

    def update_threshold(self):
        """min(m*, max_batch_size, dataset_size) as float64 (the target |Y_t|)."""
        cap = self.max_batch_size
        if self.dataset_size is not None:
            cap = min(cap, self.dataset_size)
        return tf.cast(tf.minimum(tf.cast(self._m_star.value, tf.int64), cap), tf.float64)

    def should_update(self):
        """Bool tensor: the batch being grown has reached min(m*, max_batch_size, |X|)."""
        self._require_built()
        count = self._count.value
        return tf.logical_and(count > 0, count >= self.update_threshold())

    def apply_accumulated(self, condition=None):
        """Apply the update with the mean gradient f of Y_t and start a new batch.

        v <- rho v + lr f; theta <- theta - v; mu_p <- rho mu_p + f (Eqs. 10, 11, 15).
        With `condition` (a bool tensor, normally `should_update()`) the update and the reset
        happen only where it is true, without `tf.cond`: under MirroredStrategy the variable
        updates go through `merge_call`, which TensorFlow does not allow inside `tf.cond`.
        Returns `condition` (True when None).
        """
        self._require_built()
        do = tf.constant(True) if condition is None else tf.convert_to_tensor(condition)
        count = self._count.value
        safe = tf.where(count > 0, count, tf.ones_like(count))
        f = [gs / tf.cast(safe, gs.dtype) for gs in self._grad_sums]
        f = self._clip_gradients(f)
        lr = tf.cast(self.learning_rate, tf.float32)
        tf_vars = [
            v.value if isinstance(v, keras.Variable) else v for v in self._trainable_variables
        ]

        def merge_fn(distribution, grads, do, lr):
            for index, (g, v) in enumerate(zip(grads, tf_vars)):
                distribution.extended.update(
                    v,
                    functools.partial(self._masked_update, index=index),
                    args=(g, do, lr),
                    group=False,
                )

        tf.__internal__.distribute.interim.maybe_merge_call(
            merge_fn, self._distribution_strategy, f, do, lr
        )

        def reset(var, value=None):
            value = tf.zeros_like(var.value) if value is None else value
            return (var, tf.where(do, tf.cast(value, var.dtype), var.value))

        resets = [reset(g) for g in self._grad_sums] + [reset(q) for q in self._sq_sums]
        if self._outer_sum is not None:
            resets.append(reset(self._outer_sum))
        resets += [
            reset(self._last_batch_size, tf.cast(count, tf.int64)),
            reset(self._count),
            reset(self._loss_sum),
            reset(self._proj_ssd),
            reset(self._chunks),
        ]
        self._update_vars(resets)
        self._iterations.assign_add(tf.cast(do, self._iterations.dtype))
        return do

    def discard_accumulated(self):
        """Drop the batch being grown without updating (e.g. at the end of training)."""
        self._require_built()
        resets = [(g, tf.zeros_like(g.value)) for g in self._grad_sums]
        resets += [(q, tf.zeros_like(q.value)) for q in self._sq_sums]
        if self._outer_sum is not None:
            resets.append((self._outer_sum, tf.zeros_like(self._outer_sum.value)))
        for var in (self._count, self._loss_sum, self._proj_ssd, self._chunks):
            resets.append((var, tf.zeros_like(var.value)))
        self._update_vars(resets)

    def _masked_update(self, variable, gradient, do, learning_rate, index):
        """One variable's update (runs on each replica's copy inside `extended.update`)."""
        lr = tf.cast(learning_rate, variable.dtype)
        g = tf.cast(gradient, variable.dtype)
        if self.momentum > 0:
            velocity = self._velocities[index]
            mean = self._momentum_means[index]
            rho = tf.cast(self.momentum, variable.dtype)
            new_velocity = tf.where(do, rho * velocity.value + lr * g, velocity.value)
            self.assign(velocity, new_velocity)
            self.assign(mean, tf.where(do, rho * mean.value + g, mean.value))
            step = new_velocity
        else:
            step = lr * g
        self.assign_sub(variable, tf.where(do, step, tf.zeros_like(step)))

    def apply(self, grads, trainable_variables=None):
        raise RuntimeError(
            "BAMomentum needs per-example statistics and chooses its own batch size, so it "
            "cannot apply plain gradients: train with keras_largebatch.optimizers.BAModel "
            "(model.fit) or ba_chunk_step (custom loops)."
        )

    # -- introspection ------------------------------------------------------------------------

    @property
    def accumulated_count(self):
        """|Y_t|: examples in the batch being grown (float64 tensor, read now)."""
        return tf.identity(self._count.value)

    def statistics(self) -> dict:
        """Latest m*, mu, sigma, s, |Y_t| and size of the last applied batch.

        Tensors read at the call (in a graph: after the ops before it), not variables.
        """
        return {
            "m_star": tf.identity(self._m_star.value),
            "mu": tf.identity(self._mu.value),
            "sigma": tf.identity(self._sigma.value),
            "s": tf.identity(self._state.value),
            "accumulated": tf.identity(self._count.value),
            "last_batch_size": tf.identity(self._last_batch_size.value),
        }

    def get_config(self):
        config = super().get_config()
        for key in _UNSUPPORTED_BASE_ARGS:
            config.pop(key, None)
        config.update(
            {
                "momentum": self.momentum,
                "min_increment": self.min_increment,
                "max_batch_size": self.max_batch_size,
                "loss_floor": self.loss_floor,
                "covariance": self.covariance,
                "dataset_size": self.dataset_size,
                "fd_step": self.fd_step,
            }
        )
        return config
