"""Large-batch optimizers (plain Keras 3 optimizers) and their TensorBoard callbacks.

- `LARS` (seed 004): `keras.ops` only, any backend.
- `expected_next_state`, `optimal_batch_size` (seed 002, Eqs. 7 and 9): NumPy, any backend.
- `BAMomentum` (seed 002; momentum=0 is BA-SGD) and its covariance estimators
  (ba_covariance.py): TensorFlow and JAX (ba_momentum_jax.py, ba_covariance_jax.py); their
  TensorFlow code imports TensorFlow on first use, so importing them on JAX does not. The
  train steps that drive it (`BAModel` for model.fit on both backends, `ba_chunk_step` for
  TensorFlow custom loops) live in `keras_largebatch.training.steps`.
- TensorFlow only, imported on first use so that `import keras_largebatch.optimizers` works on
  JAX and PyTorch: `LarsTrustRatioLogger` (trust ratios to TensorBoard under model.fit).
"""

import importlib

import keras

from keras_largebatch.optimizers.ba_math import expected_next_state, optimal_batch_size
from keras_largebatch.optimizers.lars import LARS

_TF_ONLY = {
    "BAMomentum": "keras_largebatch.optimizers.ba_momentum",
    "LarsTrustRatioLogger": "keras_largebatch.optimizers.lars_callback",
}

if keras.backend.backend() in ("tensorflow", "jax"):  # registers BAMomentum for keras.saving
    from keras_largebatch.optimizers.ba_momentum import BAMomentum  # noqa: F401


def __getattr__(name):
    if name in _TF_ONLY:
        return getattr(importlib.import_module(_TF_ONLY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BAMomentum",
    "LARS",
    "LarsTrustRatioLogger",
    "expected_next_state",
    "optimal_batch_size",
]
