"""keras_largebatch: large-batch and adaptive-batch training for Keras 3.

Subpackages: `optimizers` (LARS, BA-Momentum), `schedules` (epoch-keyed LR and batch-size
schedules), `layers` (ghost batch norm), `data` (sources and the pipeline builder), `models`
(the papers' networks), `training` (the distributed loop, TensorFlow). Run an experiment with
`python -m keras_largebatch.main --gin_file=...`.

`import keras_largebatch` imports the light, backend-neutral subpackages `layers`,
`optimizers` and `schedules`, which registers every serializable class with Keras
(`keras.saving.load_model` then finds LARS, GhostBatchNormalization and the schedules without
further imports) and works on the TensorFlow, JAX and PyTorch backends. On TensorFlow and
JAX it also registers `BAMomentum` (those two backends only). `BAModel` belongs to the
training layer, which the library layers never import (docs/ARCHITECTURE.md): load a saved
BAModel after `import keras_largebatch.training.steps`.
"""

from keras_largebatch import layers, optimizers, schedules

__version__ = "0.1.0"

__all__ = ["layers", "optimizers", "schedules"]
