"""Which Keras backends each piece supports, as one clear error instead of a deep failure.

    require_backends("BAMomentum", BA_BACKENDS)   # in __init__ of BAMomentum / BAModel

LARS, the schedules and GhostBatchNormalization are written in `keras.ops` and run on
TensorFlow, JAX and PyTorch. BA-Momentum (`BAMomentum`, `BAModel`) runs on TensorFlow (its
chunk protocol all-reduces through `tf.distribute`, masked updates inside `merge_call`) and
on JAX (a jitted stateless train step, optimizers/ba_model_jax.py); not on PyTorch.
"""

from __future__ import annotations

import keras

BA_BACKENDS = ("tensorflow", "jax")


def require_backends(what: str, supported: tuple[str, ...]) -> None:
    """Raise a clear error when Keras runs a backend not in `supported`."""
    backend = keras.backend.backend()
    if backend not in supported:
        raise RuntimeError(
            f"{what} does not run on the {backend} backend (supported backends: "
            f"{', '.join(supported)}; this process runs KERAS_BACKEND={backend}). LARS, the "
            "schedules and GhostBatchNormalization run on tensorflow, jax and torch."
        )

