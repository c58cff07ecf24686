"""The gradient noise scale under plain `model.fit`: an optimizer wrapper that accumulates.

    opt = NoiseScaleOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), batch_size=64)
    model.compile(optimizer=opt, loss=...)
    model.fit(x, y, batch_size=64, callbacks=[NoiseScaleLogger()])   # logs b_simple, ...
    opt.noise_scale()     # {"grad_sqr": ..., "grad_trace": ..., "b_simple": ...}

`model.fit` hands the optimizer one gradient per step, the mean gradient of a batch: there is
nothing to split. So the wrapper turns `accumulation_steps` (k >= 2) consecutive batches of
`batch_size` samples into one update of the inner optimizer, with the mean of their gradients
(the gradient of k x batch_size samples), and the k batches are the parts of McCandlish et al.'s
two-batch-size estimator (noise_scale.py, Appendix A): E|G_b|^2 from the mean of their squared
norms, |G_kb|^2 from their mean. No extra backward pass; the model trains with an update every
k batches (an effective batch of k x batch_size), which is what the LR must be set for.

The inner optimizer sees only the updates: its `iterations` (and this wrapper's, which returns
them) count updates, so a step-keyed learning-rate schedule advances once per update, not per
batch (Keras' own `gradient_accumulation_steps` calls the schedule with its micro-step counter;
training/steps/accumulation.py). On TensorFlow it applies in one replica (a multi-replica
`tf.distribute` model.fit is refused with one error: the framework loop measures across
replicas instead); on JAX the stateless path computes the inner update every batch and keeps it
only at the k-th, as Keras' JAX optimizer does for its own accumulation. Torch is not tested.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_largebatch import validate
from keras_largebatch.goodput.noise_scale import (
    estimates_from_parts,
    smoothed_update,
    smoothed_values,
)

try:  # Keras' own wrapper (LossScaleOptimizer) builds without dependency tracking
    from keras.src.utils.tracking import no_automatic_dependency_tracking
except ImportError:  # pragma: no cover - a Keras without it tracks a few more objects
    def no_automatic_dependency_tracking(fn):
        return fn


def _squared_norm(tensors):
    return sum(ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors)


@keras.saving.register_keras_serializable(package="keras_largebatch")
class NoiseScaleOptimizer(keras.optimizers.Optimizer):
    """`inner_optimizer` updated every `accumulation_steps` batches, measuring |G|^2 and
    tr(Sigma) from those batches (module docstring)."""

    def __init__(self, inner_optimizer, batch_size: int, accumulation_steps: int = 2,
                 smoothing: float = 0.999, name=None, **kwargs):
        if kwargs:
            raise ValueError(f"NoiseScaleOptimizer takes no optimizer arguments of its own "
                             f"({', '.join(kwargs)}); set them on the inner optimizer")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = keras.optimizers.get(inner_optimizer)
        self.batch_size = validate.whole("batch_size", batch_size,
                                         fix="give the batch size model.fit uses")
        self.accumulation_steps = validate.whole(
            "accumulation_steps", accumulation_steps, minimum=2,
            fix="give at least 2 batches per update (the estimator needs two parts)")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1); got {smoothing!r}")
        self.smoothing = float(smoothing)

    @no_automatic_dependency_tracking
    def build(self, var_list):
        self._accumulators = [self.add_variable_from_reference(v, name="gns_accumulator")
                              for v in var_list]
        scalar = dict(shape=(), initializer="zeros", aggregation="none")
        self._micro_sqr = self.add_variable(dtype="float32", name="gns_micro_sqr", **scalar)
        self._micro_count = self.add_variable(dtype="int32", name="gns_micro_count", **scalar)
        self._stats = [self.add_variable(dtype="float32", name=f"gns_{n}", **scalar)
                       for n in ("sqr_biased", "trace_biased", "unbias")]
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    # ---- the arithmetic of one batch (pure: both paths use it) ----------------------------
    def _next(self, grads):
        """(is_update, mean gradient, [(variable, next value)] for this wrapper's state)."""
        k = self.accumulation_steps
        dense = [ops.zeros_like(a) if g is None else ops.cast(g, a.dtype)
                 for g, a in zip(grads, self._accumulators)]
        acc = [a.value + g for a, g in zip(self._accumulators, dense)]
        sqr = self._micro_sqr.value + _squared_norm(dense)
        count = self._micro_count.value + 1
        is_update = ops.greater_equal(count, k)
        mean = [a / float(k) for a in acc]
        total = _squared_norm(mean)
        g2, trace = estimates_from_parts(sqr / float(k), total,
                                         float(k * self.batch_size), float(k))
        stats = smoothed_update([v.value for v in self._stats], g2, trace, k * self.batch_size,
                                reference_batch=k * self.batch_size, smoothing=self.smoothing)
        nxt = [(v, ops.where(is_update, ops.zeros_like(a), a))
               for v, a in zip(self._accumulators, acc)]
        nxt.append((self._micro_sqr, ops.where(is_update, 0.0, sqr)))
        nxt.append((self._micro_count, ops.where(is_update, 0, count)))
        nxt.extend((v, ops.where(is_update, new, v.value)) for v, new in zip(self._stats, stats))
        return is_update, mean, nxt

    # ---- stateful (TensorFlow, torch) -------------------------------------------------------
    def apply(self, grads, trainable_variables=None):
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                raise ValueError(
                    f"NoiseScaleOptimizer under a tf.distribute strategy of {replicas} "
                    "replicas is not supported; use one replica, or the framework loop "
                    "(train.gradient_noise_scale), which measures across replicas")
        is_update, mean, nxt = self._next(list(grads))
        for variable, value in nxt:
            variable.assign(value)
        ops.cond(is_update,
                 lambda: self.inner_optimizer.apply(mean, trainable_variables),
                 lambda: None)

    # ---- stateless (JAX) ---------------------------------------------------------------------
    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        own = len(self._variables)
        mapping = list(zip(self._variables, optimizer_variables[:own]))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            is_update, mean, nxt = self._next(list(grads))
            for variable, value in nxt:
                variable.assign(value)
        own_values = [scope.get_current_value(v) if scope.get_current_value(v) is not None
                      else value for v, value in zip(self._variables,
                                                     optimizer_variables[:own])]
        inner_values = optimizer_variables[own:]
        new_trainable, new_inner = self.inner_optimizer.stateless_apply(
            inner_values, mean, trainable_variables)
        keep = lambda new, old: [ops.where(is_update, n, o) for n, o in zip(new, old)]
        return keep(new_trainable, trainable_variables), own_values + keep(new_inner,
                                                                           inner_values)

    # ---- what it measured -------------------------------------------------------------------
    def noise_scale(self) -> dict:
        """grad_sqr = |G|^2, grad_trace = tr(Sigma), b_simple (None before the first update)."""
        return smoothed_values(*self._stats)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {"name": self.name,
                "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
                "batch_size": self.batch_size, "accumulation_steps": self.accumulation_steps,
                "smoothing": self.smoothing}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["inner_optimizer"] = keras.saving.deserialize_keras_object(
            config["inner_optimizer"], custom_objects=custom_objects)
        return cls(**config)


class NoiseScaleLogger(keras.callbacks.Callback):
    """Adds the NoiseScaleOptimizer's grad_sqr, grad_trace and b_simple to each epoch's logs
    (history, TensorBoard, CSVLogger: whatever reads `logs`)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not isinstance(self.model.optimizer, NoiseScaleOptimizer):
            return
        for key, value in self.model.optimizer.noise_scale().items():
            if value is not None:
                logs[key] = value
