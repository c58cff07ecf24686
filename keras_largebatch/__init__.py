"""keras_largebatch: large-batch and adaptive-batch training for Keras 3.

Subpackages: `optimizers` (LARS, BA-Momentum and its `BAModel`), `schedules` (epoch-keyed LR
and batch-size schedules), `layers` (ghost batch norm), `data` (sources and the pipeline
builder), `models` (the papers' networks), `training` (the distributed loop, TensorFlow),
`studies` (sweeps of runs and their figures). Run an experiment with
`python -m keras_largebatch.main --gin_file=gin/experiments/<x>.gin`.

`import keras_largebatch` is light: it imports neither Keras nor TensorFlow, so the commands
that only read JSON (`python -m keras_largebatch.studies.summary`, ...) start without them.
The subpackages load on first use (`keras_largebatch.optimizers.LARS`: PEP 562 module
`__getattr__`), and every serializable class (LARS, BAMomentum, BAModel,
GhostBatchNormalization, the schedules) is registered with Keras as soon as Keras is
imported, before or after this package (registration.py), so `keras.saving.load_model` finds
them after `import keras_largebatch` alone, on every backend the class runs on (BAMomentum
and BAModel: TensorFlow and JAX).
"""

import importlib

from keras_largebatch import registration

__version__ = "0.1.0"

_SUBPACKAGES = ("data", "layers", "models", "optimizers", "schedules", "studies", "training")

registration.install()


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SUBPACKAGES])


__all__ = ["layers", "optimizers", "schedules"]
