"""Divergence: a non-finite training loss, or one above `loss_upper_bound`, and what to do.

    train.on_divergence = 'stop'        # default: stop, results.json status "diverged", exit 3
    train.on_divergence = 'restore'     # roll back to the last good checkpoint, LR x factor
    train.loss_upper_bound = 10.0       # None: only a non-finite loss counts
    train.divergence_lr_factor = 0.5    # restore: the LR multiplier after each roll-back
    train.max_restores = 3              # restore: then stop as above

Granularity. The check reads the loop's running loss sums (variables the compiled step already
updates), so it costs one host read, no extra device work; it runs every `log_every_steps`
updates, before every checkpoint and at the last update of every epoch. A divergence is
therefore noticed at most `log_every_steps` updates after it happened, and always before the
next checkpoint: the loss checked is the mean over the updates since the previous check, and a
checkpoint is written only if that mean is finite and within the bound AND every model and
optimizer variable is finite (one reduction over the weights per save). No checkpoint with
non-finite values is ever written, so "the last good checkpoint" is simply the latest one.

Restore multiplies an LR multiplier, a variable in the checkpoint that the optimizer's schedule
reads (`MultipliedLearningRate`), so the lowered LR survives later kills and resumes.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError

MODES = ("stop", "restore")


class MultipliedLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate(step) * multiplier`, the multiplier a (checkpointed) variable."""

    def __init__(self, learning_rate, multiplier: tf.Variable):
        self.learning_rate = learning_rate
        self.multiplier = multiplier

    def __call__(self, step):
        lr = self.learning_rate
        lr = lr(step) if callable(lr) else tf.constant(lr, tf.float32)
        return lr * tf.cast(self.multiplier, lr.dtype)

    def get_config(self) -> dict:
        inner = self.learning_rate
        if isinstance(inner, keras.optimizers.schedules.LearningRateSchedule):
            inner = keras.saving.serialize_keras_object(inner)
        # A config cannot hold a variable: the multiplier is frozen at its current value.
        return {"learning_rate": inner, "multiplier": float(self.multiplier.numpy())}


class DivergenceGuard:
    """Decides, from the running loss sums, whether training diverged (see module docstring)."""

    def __init__(self, *, on_divergence: str = "stop", loss_upper_bound: float | None = None,
                 lr_factor: float = 0.5, max_restores: int = 3):
        if on_divergence not in MODES:
            raise UserInputError(f"train.on_divergence must be 'stop' or 'restore'; got "
                                 f"{on_divergence!r}")
        if loss_upper_bound is not None and not (validate.is_real(loss_upper_bound)
                                                 and math.isfinite(loss_upper_bound)
                                                 and loss_upper_bound > 0):
            raise UserInputError(f"train.loss_upper_bound must be a positive number or None; got "
                                 f"{loss_upper_bound!r}")
        if not (validate.is_real(lr_factor) and 0 < lr_factor < 1):
            raise UserInputError(f"train.divergence_lr_factor must be in (0, 1), e.g. 0.5; got "
                                 f"{lr_factor!r}")
        if not (validate.is_whole(max_restores) and max_restores >= 0):
            raise UserInputError(f"train.max_restores must be an integer >= 0; got "
                                 f"{max_restores!r}")
        self.mode = on_divergence
        self.loss_upper_bound = loss_upper_bound
        self.lr_factor = float(lr_factor)
        self.max_restores = int(max_restores)
        self.lr_multiplier: tf.Variable | None = None
        self._base = (0.0, 0.0)

    # ---- learning rate -------------------------------------------------------------------
    def wrap_learning_rate(self, learning_rate):
        """In restore mode: `learning_rate x multiplier` (create under strategy.scope())."""
        if self.mode != "restore":
            return learning_rate
        self.lr_multiplier = tf.Variable(
            1.0, dtype=tf.float32, trainable=False, name="lr_multiplier",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        return MultipliedLearningRate(learning_rate, self.lr_multiplier)

    # ---- the check -----------------------------------------------------------------------
    def rebase(self, metrics) -> None:
        """Start a new window at the metrics' current sums (epoch start, restore)."""
        self._base = (float(metrics.loss_sum.numpy()), float(metrics.count.numpy()))

    def check(self, metrics) -> str | None:
        """The mean loss since the last check; a reason string if it diverged, else None."""
        loss_sum, count = float(metrics.loss_sum.numpy()), float(metrics.count.numpy())
        base_sum, base_count = self._base
        self._base = (loss_sum, count)
        if not math.isfinite(loss_sum):
            return f"loss {loss_sum}"
        if count <= base_count:
            return None
        loss = (loss_sum - base_sum) / (count - base_count)
        if self.loss_upper_bound is not None and loss > self.loss_upper_bound:
            return f"loss {loss:.4g} above train.loss_upper_bound = {self.loss_upper_bound}"
        return None

    def finite_check(self, variables):
        """`fn() -> bool`: every floating-point variable in `variables` finite (one reduction)."""
        floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]

        @tf.function
        def all_finite():
            return tf.reduce_all(tf.stack(
                [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v))) for v in floats]
                or [tf.constant(True)]))

        return lambda: bool(all_finite())
