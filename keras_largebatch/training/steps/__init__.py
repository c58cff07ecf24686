"""Train steps that drive `BAMomentum` (seed 002, Algorithm 1) one chunk of m0 examples at a time.

- `ba_chunk_step(model, optimizer, loss_fn, x, y)`: one chunk in a custom loop (inside
  `strategy.run`): statistics, accumulate, and the update once the grown batch reaches m*.
- `BAModel` / `BATrainStep`: the same for `model.fit` (`fit(batch_size=min_increment)`).
- `BAChunkStep`: the framework loop's step (keras_largebatch/training/loop.py), with in-graph
  TensorBoard scalars per update.
"""

from keras_largebatch.training.steps.ba_model import BAModel, BATrainStep, ba_chunk_step
from keras_largebatch.training.steps.ba_step import BAChunkStep

__all__ = ["BAChunkStep", "BAModel", "BATrainStep", "ba_chunk_step"]
