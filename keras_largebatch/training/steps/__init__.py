"""Compiled train steps: one optimizer update (or one BA-Momentum chunk) per call.

- `train_step.TrainStep`: the framework loop's step for every optimizer but BA-Momentum: loss
  over the global effective batch, gradients all-reduced once by the optimizer, running metrics
  and `Progress` advanced in-graph; traced once for every batch size.
- `accumulation`: equal micro-batches when a per-replica batch exceeds `max_per_replica_batch`.
- `grad_norm`: the seed-003 authors' gradient-norm adaptation for batch augmentation.
- `ba_step.BAChunkStep`: the framework loop's step for BA-Momentum (seed 002, Algorithm 1), one
  chunk of m0 examples per call, with in-graph TensorBoard scalars per update.
- `ba_model`: the same for users: `ba_chunk_step(model, optimizer, loss_fn, x, y)` in a custom
  loop, `BAModel` / `BATrainStep` for `model.fit` (`fit(batch_size=min_increment)`), on
  TensorFlow and JAX (`ba_model_jax`: the jitted stateless step). On JAX and PyTorch importing
  this package imports no TensorFlow (the framework loop's steps load on first use).
"""

import importlib

import keras

from keras_largebatch.training.steps.ba_model import BAModel, BATrainStep, ba_chunk_step

_TF_STEPS = {"BAChunkStep": "keras_largebatch.training.steps.ba_step",
             "TrainStep": "keras_largebatch.training.steps.train_step"}

if keras.backend.backend() == "tensorflow":
    from keras_largebatch.training.steps.ba_step import BAChunkStep
    from keras_largebatch.training.steps.train_step import TrainStep


def __getattr__(name):  # the framework loop's steps: TensorFlow, imported on first use elsewhere
    if name in _TF_STEPS:
        return getattr(importlib.import_module(_TF_STEPS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BAChunkStep", "BAModel", "BATrainStep", "TrainStep", "ba_chunk_step"]
