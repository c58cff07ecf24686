"""Large-batch optimizers (plain Keras 3 optimizers), their model.fit side and callbacks.

    from keras_largebatch.optimizers import LARS, BAMomentum, BAModel

- `LARS` (seed 004): `keras.ops` only, any backend.
- `expected_next_state`, `optimal_batch_size` (seed 002, Eqs. 7 and 9): NumPy, any backend.
- `BAMomentum` (seed 002; momentum=0 is BA-SGD) and its covariance estimators
  (ba_covariance.py), and what drives its chunk protocol: `BAModel` / `BATrainStep` for
  `model.fit` and `ba_chunk_step` for custom TensorFlow loops (ba_model.py). TensorFlow and
  JAX (ba_momentum_jax.py, ba_covariance_jax.py, ba_model_jax.py); their TensorFlow code
  imports TensorFlow on first use, so importing them on JAX does not. Imported (and so
  registered for `keras.saving.load_model`) with this package on those two backends; on
  PyTorch on first use, where their constructors name the supported backends.
- TensorFlow only, imported on first use so that `import keras_largebatch.optimizers` works on
  JAX and PyTorch: `LarsTrustRatioLogger` (trust ratios to TensorBoard under model.fit).
"""

import importlib

import keras

from keras_largebatch.optimizers.ba_math import expected_next_state, optimal_batch_size
from keras_largebatch.optimizers.lars import LARS

_ON_FIRST_USE = {
    "BAMomentum": "keras_largebatch.optimizers.ba_momentum",
    "BAModel": "keras_largebatch.optimizers.ba_model",
    "BATrainStep": "keras_largebatch.optimizers.ba_model",
    "ba_chunk_step": "keras_largebatch.optimizers.ba_model",
    "LarsTrustRatioLogger": "keras_largebatch.optimizers.lars_callback",
}

if keras.backend.backend() in ("tensorflow", "jax"):  # registers them for keras.saving
    from keras_largebatch.optimizers.ba_model import BAModel, BATrainStep, ba_chunk_step  # noqa: F401
    from keras_largebatch.optimizers.ba_momentum import BAMomentum  # noqa: F401


def __getattr__(name):
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BAModel",
    "BAMomentum",
    "BATrainStep",
    "LARS",
    "LarsTrustRatioLogger",
    "ba_chunk_step",
    "expected_next_state",
    "optimal_batch_size",
]
