"""keras_largebatch: large-batch and adaptive-batch training for TensorFlow / Keras 3.

Subpackages: `optimizers` (LARS, BA-Momentum), `schedules` (epoch-keyed LR and batch-size
schedules), `layers` (ghost batch norm), `data` (sources and the pipeline builder), `models`
(the papers' networks), `training` (the distributed loop). Run an experiment with
`python -m keras_largebatch.main --gin_file=...`.
"""

__version__ = "0.1.0"
