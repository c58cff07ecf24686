"""Which Keras backends each piece supports, as one clear error instead of a deep failure.

    require_tensorflow_backend("BAMomentum")   # in __init__ of TensorFlow-only classes

LARS, the schedules and GhostBatchNormalization are written in `keras.ops` and run on
TensorFlow, JAX and PyTorch. BA-Momentum's chunk protocol (all-reduces through
`tf.distribute`, masked updates inside `merge_call`), its covariance estimators and `BAModel`
are TensorFlow code.
"""

from __future__ import annotations

import keras


def require_tensorflow_backend(what: str) -> None:
    """Raise a clear error when Keras runs another backend than TensorFlow."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} supports the TensorFlow backend only (supported backends: tensorflow); "
            f"this process runs KERAS_BACKEND={backend}. LARS, the schedules and "
            "GhostBatchNormalization run on tensorflow, jax and torch."
        )
