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
cap |Y_t| at `max_batch_size`. rho = 0 is BA-SGD. Eqs. 7-9 are in ba_math.py; Sigma_t and
sigma_t come from the estimator of the `covariance=` mode (ba_covariance.py).

Two decisions the paper leaves open:

- mu_t <= 0 (possible only with momentum: the step rho v + eta f points uphill). Then
  s - E_m[s'] < 0 for every m, and Eq. 9 picks the largest m only because a loss increase
  divided by m looks smaller per sample; no batch size makes the step descend. We set m* = 1
  (update at once). For mu_t > 0 Eq. 9 is followed literally, including c < 0 (batch loss at
  or below S* + eta mu), where growing the batch is what makes s_t trustworthy. (Without this
  rule, momentum overshoot on a noiseless problem grows batches up to max_batch_size.)
- With one example (|Y_t| = 1) Sigma_t is undefined: m* is raised to 2.

sigma^2 = f^T Sigma_t f enters Eq. 7 undivided (Eq. 7 itself divides it by m); with
`sigma_convention="authors"` divided by |Y_t| first, as the authors' code does (ba_math.py).

Protocol (all graph-friendly; call inside `tf.function` and, with a strategy, `strategy.run`):

    stats = opt.compute_chunk_statistics(model, loss_fn, x, y)  # this replica's chunk part
    opt.accumulate(stats)      # all-reduces the chunk sums once, grows Y_t, recomputes m*
    ready = opt.should_update()    # |Y_t| >= min(m*, max_batch_size, dataset_size)
    opt.apply_accumulated(ready)   # where ready: v, theta, mu_p; reset the accumulators

Pass the condition instead of wrapping the call in `tf.cond`: under MirroredStrategy the
variable updates go through `merge_call`, which TensorFlow forbids inside `tf.cond`.
`keras_largebatch.optimizers.ba_chunk_step` wraps exactly this (`BAModel` for model.fit).

All state lives in optimizer variables: a `tf.train.Checkpoint` of the optimizer resumes the
same trajectory, including a half-grown batch (checkpoint the model's dropout seed states,
`model.non_trainable_variables`, apart for a bit-identical resume). Sample weights and mixed
precision loss scaling are not supported. Backends: TensorFlow (this protocol) and JAX
(ba_momentum_jax.py, driven by `BAModel`); on PyTorch the constructor names the supported ones.

Reference: seed 002, batch-adaptive momentum (Algorithm 1, Eqs. 4-11 and 15).
"""

from __future__ import annotations

import functools
import math

import keras

from keras_largebatch.optimizers.ba_covariance import (
    COVARIANCE_MODES,
    ChunkStatistics,
    covariance_estimator,
)
from keras_largebatch.optimizers.ba_math import (  # tf: TensorFlow, imported on first use
    check_sigma_convention,
    eq7_sigma2,
    tf,
    tf_optimal_batch_size,
)
from keras_largebatch.optimizers.backends import BA_BACKENDS, require_backends
from keras_largebatch.validate import is_int, is_real

_UNSUPPORTED_BASE_ARGS = ("gradient_accumulation_steps", "use_ema", "loss_scale_factor",
                          "weight_decay")


@keras.saving.register_keras_serializable(package="keras_largebatch")
class BAMomentum(keras.optimizers.Optimizer):
    """Batch-adaptive momentum (seed 002): grows each batch until it reaches the size m*.

    Train with `keras_largebatch.optimizers`: `BAModel(model)` for model.fit (with
    `fit(batch_size=min_increment)`, one chunk per step) or `ba_chunk_step` in a custom loop.

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
            models only); see ba_covariance.py.
        sigma_convention: "paper" (f^T Sigma f enters Eq. 7) or "authors" (f^T Sigma f / |Y_t|,
            as the authors' code: m* ~|Y_t| times smaller); any `covariance`. ba_math.py.
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
        sigma_convention: str = "paper",
        name: str | None = None,
        **kwargs,
    ):
        require_backends("BAMomentum", BA_BACKENDS)
        for arg in _UNSUPPORTED_BASE_ARGS:
            if kwargs.get(arg):
                raise ValueError(
                    f"BAMomentum does not support `{arg}` (see the class docstring). "
                    f"Received: {arg}={kwargs[arg]!r}"
                )
            kwargs.pop(arg, None)
        if is_real(learning_rate):
            if not (math.isfinite(learning_rate) and learning_rate > 0):
                raise ValueError("`learning_rate` must be a finite float > 0. "
                                 f"Received: learning_rate={learning_rate!r}")
            learning_rate = float(learning_rate)
        if not is_real(momentum) or not 0.0 <= momentum < 1.0:
            raise ValueError("`momentum` must be a float in [0, 1). "
                             f"Received: momentum={momentum!r}")
        if not is_int(min_increment) or min_increment < 1:
            raise ValueError("`min_increment` must be an integer >= 1. "
                             f"Received: min_increment={min_increment!r}")
        if not is_int(max_batch_size) or max_batch_size < min_increment:
            raise ValueError("`max_batch_size` must be an integer >= min_increment "
                             f"({min_increment}). Received: max_batch_size={max_batch_size!r}")
        if not is_real(loss_floor) or not math.isfinite(loss_floor):
            raise ValueError("`loss_floor` must be a finite float. "
                             f"Received: loss_floor={loss_floor!r}")
        if covariance not in COVARIANCE_MODES:
            raise ValueError(f"`covariance` must be one of {COVARIANCE_MODES}. "
                             f"Received: covariance={covariance!r}")
        if dataset_size is not None and (not is_int(dataset_size) or dataset_size < 1):
            raise ValueError("`dataset_size` must be None or an integer >= 1. "
                             f"Received: dataset_size={dataset_size!r}")
        if not is_real(fd_step) or not 0 < fd_step < 1:
            raise ValueError(f"`fd_step` must be a float in (0, 1). Received: fd_step={fd_step!r}")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.min_increment = int(min_increment)
        self.max_batch_size = int(max_batch_size)
        self.loss_floor = float(loss_floor)
        self.covariance = covariance
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self.fd_step = float(fd_step)
        self.sigma_convention = check_sigma_convention(sigma_convention)
        self._estimator = covariance_estimator(covariance, fd_step=self.fd_step)

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
        self._estimator.build(self, variables)  # the mode's own sums (ba_covariance.py)

        def scalar(name, dtype):
            return self.add_variable((), name=name, dtype=dtype)

        self._loss_sum = scalar("loss_sum", "float64")
        self._count = scalar("example_count", "float64")
        self._estimator.build_scalars(self)
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
        return self._estimator.chunk_statistics(model, loss_fn, x, y)

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
        local += self._estimator.local_sums(stats)
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
        sigma2, updates = self._estimator.sigma2(
            stats, rest, f, ff, count, dof, functools.partial(self._all_reduce, ctx)
        )

        if self.momentum > 0:  # mu = f . mu_p with mu_p = rho * mu_p_{t-1} + f (Eq. 15)
            mu = f64(tf.add_n([
                tf.reduce_sum(tf.cast(fi * (self.momentum * mp.value + fi), tf.float32))
                for fi, mp in zip(f, self._momentum_means)]))
        else:
            mu = ff
        s = loss_sum / count
        sigma2 = eq7_sigma2(sigma2, count, self.sigma_convention)
        sigma = tf.sqrt(tf.maximum(sigma2, 0.0))

        finite = tf.reduce_all(tf.math.is_finite(tf.stack([s, ff, mu, sigma2])))
        check = tf.debugging.Assert(finite, [
            "BAMomentum: non-finite loss or gradient while growing the batch of update",
            self._iterations + 1, "(chunk", self._chunks + 1, "of the batch; loss sum", loss_sum,
            "|f|^2", ff,
            "). The state was not changed; lower the learning rate or check the inputs.",
        ], summarize=8)
        with tf.control_dependencies([check]):
            lr = f64(self.learning_rate)
            m_star = tf_optimal_batch_size(s, self.loss_floor, mu, sigma, lr, self.max_batch_size)
            # mu <= 0: the momentum step does not descend, u(m) < 0 for every m and Eq. 9
            # would pick the cap; no batch size makes it descend, so update now (m* = 1).
            m_star = tf.where(mu <= 0, tf.ones_like(m_star), m_star)
            # With one example the covariance is unknown: collect at least one more.
            m_star = tf.where(count < 2.0, tf.maximum(m_star, 2), m_star)
            updates += list(zip(self._grad_sums, grad_sums))
            updates += [(self._count, count), (self._loss_sum, loss_sum),
                        (self._chunks, self._chunks + 1), (self._m_star, m_star), (self._mu, mu),
                        (self._sigma, sigma), (self._state, s)]
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
        happen only where it is true, without `tf.cond` (module docstring). Returns `condition`
        (True when None).
        """
        self._require_built()
        do = tf.constant(True) if condition is None else tf.convert_to_tensor(condition)
        count = self._count.value
        safe = tf.where(count > 0, count, tf.ones_like(count))
        f = [gs / tf.cast(safe, gs.dtype) for gs in self._grad_sums]
        f = self._clip_gradients(f)
        lr = tf.cast(self.learning_rate, tf.float32)
        tf_vars = [v.value if isinstance(v, keras.Variable) else v
                   for v in self._trainable_variables]

        def merge_fn(distribution, grads, do, lr):
            for index, (g, v) in enumerate(zip(grads, tf_vars)):
                update = functools.partial(self._masked_update, index=index)
                distribution.extended.update(v, update, args=(g, do, lr), group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            merge_fn, self._distribution_strategy, f, do, lr
        )

        def reset(var, value=None):
            value = tf.zeros_like(var.value) if value is None else value
            return (var, tf.where(do, tf.cast(value, var.dtype), var.value))

        resets = [reset(g) for g in self._grad_sums + self._estimator.accumulators()]
        resets += [reset(self._last_batch_size, tf.cast(count, tf.int64)), reset(self._count),
                   reset(self._loss_sum), reset(self._chunks)]
        self._update_vars(resets)
        self._iterations.assign_add(tf.cast(do, self._iterations.dtype))
        return do

    def discard_accumulated(self):
        """Drop the batch being grown without updating (e.g. at the end of training)."""
        self._require_built()
        accumulators = self._grad_sums + self._estimator.accumulators()
        accumulators += [self._count, self._loss_sum, self._chunks]
        resets = [(var, tf.zeros_like(var.value)) for var in accumulators]
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
        return keras.ops.copy(self._count.value)

    def statistics(self) -> dict:
        """Latest m*, mu, sigma, s, |Y_t| and size of the last applied batch.

        Tensors read at the call (in a graph: after the ops before it), not variables.
        """
        return {
            "m_star": keras.ops.copy(self._m_star.value),
            "mu": keras.ops.copy(self._mu.value),
            "sigma": keras.ops.copy(self._sigma.value),
            "s": keras.ops.copy(self._state.value),
            "accumulated": keras.ops.copy(self._count.value),
            "last_batch_size": keras.ops.copy(self._last_batch_size.value),
        }

    def get_config(self):
        config = super().get_config()
        for key in _UNSUPPORTED_BASE_ARGS:
            config.pop(key, None)
        config.update({
            "momentum": self.momentum,
            "min_increment": self.min_increment,
            "max_batch_size": self.max_batch_size,
            "loss_floor": self.loss_floor,
            "covariance": self.covariance,
            "dataset_size": self.dataset_size,
            "fd_step": self.fd_step,
            "sigma_convention": self.sigma_convention,
        })
        return config
