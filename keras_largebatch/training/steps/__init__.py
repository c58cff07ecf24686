"""Compiled train steps of the framework loop: one optimizer update (or one BA chunk) per call.

- `train_step.TrainStep`: the framework loop's step for every optimizer but BA-Momentum: loss
  over the global effective batch, gradients all-reduced once by the optimizer, running metrics
  and `Progress` advanced in-graph; traced once for every batch size.
- `accumulation`: equal micro-batches when a per-replica batch exceeds `max_per_replica_batch`.
- `grad_norm`: the seed-003 authors' gradient-norm adaptation for batch augmentation.
- `ba_step.BAChunkStep`: the framework loop's step for BA-Momentum (seed 002, Algorithm 1), one
  chunk of m0 examples per call (`keras_largebatch.optimizers.ba_chunk_step`), with in-graph
  TensorBoard scalars per update.

TensorFlow code, imported on first use (`keras_largebatch.training.steps.TrainStep`). BA-Momentum
for users (`BAModel` for model.fit, `ba_chunk_step` for custom loops) is in
`keras_largebatch.optimizers`; the old names here (`training.steps.BAModel`, `BATrainStep`,
`ba_chunk_step`) still work with a DeprecationWarning and are removed in keras_largebatch 0.2.0.
"""

import importlib
import warnings

_STEPS = {"BAChunkStep": "keras_largebatch.training.steps.ba_step",
          "TrainStep": "keras_largebatch.training.steps.train_step"}
_MOVED = ("BAModel", "BATrainStep", "ba_chunk_step")  # to keras_largebatch.optimizers


def __getattr__(name):
    if name in _STEPS:
        return getattr(importlib.import_module(_STEPS[name]), name)
    if name in _MOVED:
        warnings.warn(
            f"keras_largebatch.training.steps.{name} is deprecated and removed in "
            f"keras_largebatch 0.2.0: use keras_largebatch.optimizers.{name}",
            DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("keras_largebatch.optimizers.ba_model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BAChunkStep", "TrainStep"]
