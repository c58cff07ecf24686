"""Epoch-keyed learning-rate and batch-size schedules (DESIGN.md: progress, not steps).

Learning rate (Keras `LearningRateSchedule`s reading `Progress.epoch`): `Constant`,
`LinearWarmup`, `PolynomialDecay`, `StepDecay`, `BatchScheduleMultiplier`, `BatchScaled`.
Batch size: `FixedBatch`, `PiecewiseBatch`, `AdaBatch`, each with `phases(total_epochs)` ->
list of `Phase`. Scaling rules: `scale_learning_rate`. Under `model.fit`: `ProgressCallback`
and `fit_with_batch_schedule`.
"""

from keras_largebatch.schedules.batch import (
    AdaBatch,
    BatchSchedule,
    FixedBatch,
    Phase,
    PiecewiseBatch,
)
from keras_largebatch.schedules.batch_coupled import BatchScaled, BatchScheduleMultiplier
from keras_largebatch.schedules.keras_fit import ProgressCallback, fit_with_batch_schedule
from keras_largebatch.schedules.learning_rate import (
    Constant,
    EpochSchedule,
    LinearWarmup,
    PolynomialDecay,
    StepDecay,
    as_schedule,
)
from keras_largebatch.schedules.progress import Progress, default_progress, set_default_progress
from keras_largebatch.schedules.scaling import scale_learning_rate

__all__ = [
    "AdaBatch",
    "BatchScaled",
    "BatchSchedule",
    "BatchScheduleMultiplier",
    "Constant",
    "EpochSchedule",
    "FixedBatch",
    "LinearWarmup",
    "Phase",
    "PiecewiseBatch",
    "PolynomialDecay",
    "Progress",
    "ProgressCallback",
    "StepDecay",
    "as_schedule",
    "default_progress",
    "fit_with_batch_schedule",
    "scale_learning_rate",
    "set_default_progress",
]
