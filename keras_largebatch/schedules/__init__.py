"""Epoch-keyed learning-rate and batch-size schedules.

Every schedule here is a function of the fractional epoch

    epoch = epoch_index + step_in_epoch / steps_per_epoch

never of the step count, because steps per epoch change with the batch size. The clock is a
`Progress` (progress.py; `default_progress()` is the one process-wide instance), advanced by the
framework loop's train step or, under `model.fit`, by `ProgressCallback`.

- progress.py: `Progress`, `default_progress`, `set_default_progress`.
- learning_rate.py: Keras `LearningRateSchedule`s reading `Progress.epoch`: `EpochSchedule`,
  `Constant`, `LinearWarmup`, `PolynomialDecay`, `StepDecay`, `as_schedule`.
- batch_coupled.py: learning rates that follow a batch schedule: `BatchScheduleMultiplier`
  (schedule x the batch schedule's LR multiplier), `BatchScaled` (schedule x scale(m(e) / m_ref)).
- batch.py: batch size per epoch: `FixedBatch`, `PiecewiseBatch`, `AdaBatch` (base class
  `BatchSchedule`), each with `phases(total_epochs)` -> list of `Phase`.
- scaling.py: `scale_learning_rate` (linear, sqrt or no scaling between batch sizes).
- keras_fit.py: plain `model.fit`: `ProgressCallback`, `fit_with_batch_schedule`.
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
