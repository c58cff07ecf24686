"""Deprecated: `BAModel`, `BATrainStep` and `ba_chunk_step` live in keras_largebatch.optimizers.

    from keras_largebatch.optimizers import BAModel, BATrainStep, ba_chunk_step

This module re-exports them with a DeprecationWarning and is removed in keras_largebatch 0.2.0.
"""

import warnings

from keras_largebatch.optimizers.ba_model import BAModel, BATrainStep, ba_chunk_step

warnings.warn(
    "keras_largebatch.training.steps.ba_model is deprecated and removed in keras_largebatch "
    "0.2.0: import BAModel, BATrainStep and ba_chunk_step from keras_largebatch.optimizers",
    DeprecationWarning, stacklevel=2)

__all__ = ["BAModel", "BATrainStep", "ba_chunk_step"]
