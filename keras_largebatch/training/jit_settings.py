"""Which runs `train.jit_compile = True` can compile with XLA; the others are refused up front.

    check_jit_settings(model, optimizer, jit_compile=True, deterministic=False)

With `train.jit_compile = True` the framework loop compiles each replica's forward and backward
pass with XLA (`TrainStep`, `tf.function(jit_compile=True)`); the optimizer update and the
all-reduce stay in the ordinary graph. Every shipped model, optimizer (sgd, momentum, adam,
lars) and layer (ghost BN included, any batch size) compiles and trains to the same weights as
without XLA (tests/training/test_jit_compile.py). Two combinations cannot work, and are refused
with one error line before anything is written (BUILD_NOTES "XLA where users turn it on"):

- BA-Momentum (`ba_momentum`, `ba_sgd`): its chunk step is one piece -- statistics, the
  all-reduce, the m* decision and the masked update -- whose state changes go through
  `merge_call`, which a compiled function inside `strategy.run` cannot contain; and XLA drops
  `tf.debugging.Assert`, so the in-graph check that names a non-finite loss before the state
  changes would silently let NaN into the accumulated sums (measured: uncompiled, the assert
  fires; compiled, loss NaN and no error).
- `train.deterministic = True` with a max-pooling layer: under TensorFlow's op determinism XLA
  refuses MaxPoolGrad ("GPU MaxPool gradient ops do not yet have a deterministic XLA
  implementation", also on CPU), at the first update. Models without max pooling (the CIFAR
  ResNets) compile deterministically.
"""

from __future__ import annotations

import keras

from keras_largebatch.errors import UserInputError


def max_pooling_layers(model: keras.Model) -> list[str]:
    """Names of the model's max-pooling layers (any nesting depth)."""
    return [layer.name for layer in model._flatten_layers(include_self=False)  # noqa: SLF001
            if getattr(layer, "pool_mode", None) == "max"]


def check_jit_settings(model: keras.Model, optimizer, *, jit_compile: bool,
                       deterministic: bool) -> None:
    """Raise UserInputError for a `train.jit_compile = True` run that XLA cannot compile."""
    if not jit_compile:
        return
    from keras_largebatch.optimizers.ba_momentum import BAMomentum

    if isinstance(optimizer, BAMomentum):
        raise UserInputError(
            "train.jit_compile = True is not supported with optimizer 'ba_momentum' / "
            "'ba_sgd' (XLA cannot hold its cross-replica state updates and drops its "
            "non-finite check); remove train.jit_compile")
    pools = max_pooling_layers(model)
    if deterministic and pools:
        raise UserInputError(
            f"train.jit_compile = True cannot be combined with train.deterministic = True "
            f"for model {model.name!r}: XLA has no deterministic max-pooling gradient "
            f"(layer {pools[0]!r}); drop one of the two settings")
