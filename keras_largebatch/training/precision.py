"""Mixed precision for a run: `train.precision = 'float32' | 'mixed_bfloat16' | 'mixed_float16'`.

    python -m keras_largebatch.main --gin_bindings="train.precision = 'mixed_bfloat16'"

    with precision_policy("mixed_bfloat16"):       # what loop.run does around the whole run
        model = float32_outputs(build_model(...))  # logits (and so the loss) in float32
        optimizer = loss_scaled(optimizer, "mixed_bfloat16")   # LossScaleOptimizer for float16

The Keras dtype policy is global: it is set before the model is built and the previous policy is
restored when the run ends (also on errors). Under a mixed policy the variables stay float32
and layers compute in bfloat16 / float16; the model's outputs are cast back to float32 by a
final `Activation('linear', dtype='float32')`, so the loss, the metrics and every statistic
derived from the logits are float32. `mixed_float16` wraps the optimizer in
`keras.optimizers.LossScaleOptimizer` (dynamic loss scaling): the train step multiplies the loss
by the scale (`optimizer.scale_loss`) and `apply_gradients` unscales the gradients and skips
the update when they are not finite. bfloat16 has float32's exponent range and needs no scaling.

What stays float32 whatever the policy (checked in tests/training/test_precision.py): LARS's
norms and trust ratios (computed on the float32 variables and unscaled gradients), BA-Momentum's
loss, mu, sigma and projections (ba_covariance.py casts to float32 / float64), ghost BN's and
Keras BN's statistics (they compute in float32 for 16-bit inputs). BA-Momentum does not support
loss scaling, so it refuses `mixed_float16`.

Under `model.fit` (schedules/keras_fit.py, BAModel) the user sets the policy as Keras does:
`keras.mixed_precision.set_global_policy('mixed_bfloat16')` before building the model, a float32
last layer, and `model.compile(...)` (Keras itself wraps the optimizer for `mixed_float16`).
"""

from __future__ import annotations

import contextlib

import keras

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
OUTPUT_LAYER_NAME = "float32_outputs"


@contextlib.contextmanager
def precision_policy(precision: str):
    """Set the global Keras dtype policy to `precision` inside; restore the previous one."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_outputs(model: keras.Model) -> keras.Model:
    """`model` whose outputs are float32: unchanged if they are, else a functional model that
    ends in `Activation('linear', dtype='float32')` (the same layers and variables)."""
    outputs = getattr(model, "outputs", None)
    if not outputs:  # a subclassed model: follow it with the cast
        if str(model.compute_dtype) == "float32":
            return model
        return keras.Sequential([model, _cast_layer()], name=model.name)
    if all(str(t.dtype) == "float32" for t in outputs):
        return model
    new_outputs = [_cast(t, i if len(outputs) > 1 else None) for i, t in enumerate(outputs)]
    return keras.Model(model.inputs, new_outputs if len(new_outputs) > 1 else new_outputs[0],
                       name=model.name)


def _cast_layer(index=None):
    name = OUTPUT_LAYER_NAME if index is None else f"{OUTPUT_LAYER_NAME}_{index}"
    return keras.layers.Activation("linear", dtype="float32", name=name)


def _cast(tensor, index=None):
    return _cast_layer(index)(tensor)


def loss_scaled(optimizer: keras.optimizers.Optimizer, precision: str):
    """`optimizer` in a dynamic `LossScaleOptimizer` for `mixed_float16`, else unchanged."""
    if precision == "mixed_float16" and not isinstance(optimizer,
                                                        keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
