"""Training with BAMomentum: `BAModel` for `model.fit` and `ba_chunk_step` for custom loops.

    from keras_largebatch.optimizers import BAModel, BAMomentum, ba_chunk_step

Every call consumes one chunk of `min_increment` examples (globally, across replicas): the
optimizer adds the chunk to the batch it is growing and applies an update only once the batch
has reached the size m* it chose (seed 002, Algorithm 1). So the pipeline's global batch size is
`min_increment` and the number of optimizer updates is data-dependent.

Custom loop (inside `tf.function`; the optimizer and model built under `strategy.scope()`):

```python
optimizer.build(model.trainable_variables)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

@tf.function
def train_chunk(iterator):
    x, y = next(iterator)   # per-replica part of one global chunk of min_increment examples
    return strategy.run(ba_chunk_step, args=(model, optimizer, loss_fn, x, y))
```

`model.fit`:

```python
model = BAModel(build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10))
model.compile(optimizer=BAMomentum(min_increment=32),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x, y, batch_size=32, epochs=...)   # batch_size == min_increment
```

Saving: `model.save("m.keras")` / `keras.saving.load_model` (after `import keras_largebatch`)
restore the compiled BAMomentum with its whole state, a half-grown batch included, so a model
saved mid-training continues exactly (`compile_from_config`).

Backends: TensorFlow (`ba_chunk_step`, distributed under tf.distribute) and JAX, where
`train_step(state, data)` is the jitted stateless step of ba_model_jax.py (per-example
statistics by `jax.vjp`, one batched pass or `jax.vmap`, same updates as on TensorFlow); every
covariance mode on both. `ba_chunk_step` (custom loops) is TensorFlow code. PyTorch: the
constructor raises an error naming the supported backends.

`BAModel` logs `batch_size_per_update` (mean size of the updates applied so far this epoch),
`updates` (their number), and the latest `m_star`, `mu`, `sigma` and `s`. A model subclass can
get the same `train_step` by inheriting `BATrainStep` first: `class M(BATrainStep, keras.Model)`.

This is the model-side half of the optimizer's chunk protocol, so it lives next to `BAMomentum`
in the library layer (it imports nothing from `keras_largebatch.training`); the framework
loop's own BA step (training/steps/ba_step.py) calls `ba_chunk_step` from here. The old
names `keras_largebatch.training.steps.BAModel` (`BATrainStep`, `ba_chunk_step`, and the module
`training.steps.ba_model`) still work with a DeprecationWarning and are removed in 0.2.0.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_largebatch.optimizers.ba_math import tf  # TensorFlow, imported on first use
from keras_largebatch.optimizers.ba_momentum import BAMomentum
from keras_largebatch.optimizers.backends import BA_BACKENDS, require_backends


def ba_chunk_step(
    model: keras.Model,
    optimizer: BAMomentum,
    loss_fn: Callable,
    x,
    y,
    *,
    return_predictions: bool = False,
) -> dict:
    """Feed one chunk to `optimizer` and update the model if the grown batch is big enough.

    Call inside `strategy.run` (or with no strategy); `x`, `y` are this replica's examples and
    `loss_fn(y, y_pred)` returns one loss per example. Returns scalars, identical on every
    replica: `loss` (mean loss of the global chunk), `did_update` (bool),
    `batch_size_of_update` (examples in the applied batch, 0 when no update), `m_star`, `mu`,
    `sigma`, `s` (loss of the batch grown so far, before the update), `accumulated` (|Y_t|
    after this call). With `return_predictions=True` also `y_pred` (this replica's outputs).
    """
    stats = optimizer.compute_chunk_statistics(model, loss_fn, x, y)
    chunk_loss, chunk_count = optimizer.accumulate(stats)
    batch = tf.cast(optimizer.accumulated_count, tf.int64)
    did_update = optimizer.should_update()
    info = optimizer.statistics()

    optimizer.apply_accumulated(did_update)  # masked, no tf.cond (see apply_accumulated)
    size = tf.where(did_update, batch, tf.zeros((), tf.int64))
    out = {
        "loss": chunk_loss / chunk_count,
        "did_update": did_update,
        "batch_size_of_update": size,
        "m_star": info["m_star"],
        "mu": info["mu"],
        "sigma": info["sigma"],
        "s": info["s"],
        "accumulated": tf.where(did_update, tf.zeros((), tf.int64), batch),
    }
    if return_predictions:
        out["y_pred"] = stats.y_pred
    return out


def per_example_loss(loss) -> Callable:
    """A per-example version (reduction=None) of a Keras loss given to `compile`."""
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        config["reduction"] = None
        return loss.__class__.from_config(config)
    if isinstance(loss, str):
        return per_example_loss(keras.losses.get(loss))
    if callable(loss):
        return loss  # loss functions already return one value per example
    raise ValueError(
        "BAModel needs a single loss (a keras.losses.Loss, its name, or a function of "
        f"(y_true, y_pred) returning one value per example). Received: loss={loss!r}"
    )


class _Last(keras.metrics.Metric):
    """The most recent value (identical on all replicas)."""

    def __init__(self, name, dtype="float64"):
        super().__init__(name=name, dtype=dtype)
        self.value = self.add_variable(
            (), initializer="zeros", dtype=dtype, aggregation="mean", name="value"
        )

    def update_state(self, value):
        self.value.assign(keras.ops.cast(value, self.dtype))

    def result(self):
        return self.value.value


class BATrainStep:
    """Mixin: a `train_step` that trains with a compiled `BAMomentum` chunk by chunk.

    Put it first: `class MyModel(BATrainStep, keras.Model)`; construct the model under the
    strategy's scope when distributed (the BA metrics are created in `__init__`).
    """

    def __init__(self, *args, **kwargs):
        require_backends("BAModel", BA_BACKENDS)
        super().__init__(*args, **kwargs)
        self._ba_metric_objects = {
            "batch_size_per_update": keras.metrics.Mean(name="batch_size_per_update"),
            "updates": keras.metrics.Sum(name="updates"),
            "m_star": _Last("m_star"),
            "mu": _Last("mu"),
            "sigma": _Last("sigma"),
            "s": _Last("s"),
        }

    def compile(self, *args, **kwargs):
        self._ba_ready = False  # re-read optimizer and loss on the next trace
        return super().compile(*args, **kwargs)

    def compile_from_config(self, config):
        """Recompile from `get_compile_config()` when a `.keras` file is loaded.

        Keras skips this for models with a custom `compile` (ours resets the BA set-up), so
        without it a loaded BAModel had no optimizer. The optimizer is built on the trainable
        variables here, before Keras loads its saved variables: iterations, velocities, the
        momentum means and the partly grown batch (sums, count, m*) come back exactly, so
        training continues as if never interrupted.
        """
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.trainable_variables:
            self.optimizer.build(self.trainable_variables)

    def _ba_setup(self):
        if getattr(self, "_ba_ready", False):
            return
        if not isinstance(self.optimizer, BAMomentum):
            raise ValueError(
                "BAModel must be compiled with a keras_largebatch BAMomentum optimizer. "
                f"Received: optimizer={self.optimizer!r}"
            )
        if not self.optimizer.built:  # without a strategy Keras defers this to tracing
            self.optimizer.build(self.trainable_variables)
        self._ba_loss_fn = per_example_loss(self.loss)
        self._ba_ready = True

    def train_step(self, *args):
        """TF: `train_step(data)` -> logs; JAX: `train_step(state, data)` -> (logs, state)."""
        if keras.backend.backend() == "jax":
            from keras_largebatch.optimizers.ba_model_jax import jax_train_step

            return jax_train_step(self, *args)
        (data,) = args
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("BAModel does not support sample weights. Received sample_weight.")
        self._ba_setup()
        out = ba_chunk_step(self, self.optimizer, self._ba_loss_fn, x, y, return_predictions=True)
        n = tf.shape(tf.nest.flatten(x)[0])[0]
        self._loss_tracker.update_state(out["loss"], sample_weight=n)
        m = self._ba_metric_objects
        updated = tf.cast(out["did_update"], tf.float32)
        m["batch_size_per_update"].update_state(
            tf.cast(out["batch_size_of_update"], tf.float32), sample_weight=updated
        )
        m["updates"].update_state(updated)
        for key in ("m_star", "mu", "sigma", "s"):
            m[key].update_state(out[key])
        logs = self.compute_metrics(x, y, out["y_pred"])
        for key, metric in m.items():
            logs[key] = metric.result()
        return logs


@keras.saving.register_keras_serializable(package="keras_largebatch")
class BAModel(BATrainStep, keras.Model):
    """Wraps any Keras model so that `fit` trains it with `BAMomentum` (see module docstring).

    `fit(batch_size=...)` must be the optimizer's `min_increment` (the global chunk size).
    Evaluation and prediction behave as for the wrapped model.
    """

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        # On TensorFlow never XLA (Keras' jit_compile="auto" turns it on where a GPU is):
        # BAMomentum's state updates go through merge_call and XLA drops its non-finite-loss
        # assert (BUILD_NOTES). On JAX the step is built to be jitted (ba_model_jax.py).
        self.supports_jit = keras.backend.backend() != "tensorflow"

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config["model"] = keras.saving.serialize_keras_object(self.model)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)
