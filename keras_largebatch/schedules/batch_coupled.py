"""Learning-rate schedules coupled to a batch-size schedule: lr(e) = schedule(e) x factor(e).

    ada = AdaBatch(128, interval_epochs=20, growth_factor=2, lr_decay=0.75)
    lr = BatchScheduleMultiplier(LinearWarmup(0.1, warmup_epochs=5), ada)
    # lr(e) = warmup(e) * 0.75 ** floor(e / 20)

    lr = BatchScaled(2**-8, PiecewiseBatch([25], [32, 64]))
    # lr(e) = 2**-8 * m(e): 0.125 before epoch 25, 0.25 after

Both read the batch schedule in-graph at the same fractional epoch as the wrapped schedule
(`BatchSchedule.lr_multiplier_at` / `batch_size_at`), so one object follows the batch phases
without any host-side change of the optimizer's learning rate:

- `BatchScheduleMultiplier(schedule, batch_schedule)`: lr(e) = schedule(e) x
  batch_schedule.lr_multiplier(e), AdaBatch's lr_decay ** k on top of a warmup / decay, so
  AdaBatch + warmup + LARS is one schedule.
- `BatchScaled(schedule, batch_schedule, reference_batch_size=1, rule="linear")`:
  lr(e) = schedule(e) x scale(m(e) / m_ref) for the batch size m(e) the batch schedule has now,
  with scale the rule of `scaling.py` (m / m_ref, sqrt(m / m_ref) or 1). With the defaults this
  is seed 001's sum-of-gradients view: the schedule gives the base LR eta~ = eta / m and the
  optimizer uses eta = eta~ * m for whatever m the current phase has.

Both are `EpochSchedule`s (learning_rate.py): same clock, same serialization (the nested
schedule and batch schedule are stored as `keras.saving.serialize_keras_object` dicts).
"""

from __future__ import annotations

import keras

from keras_largebatch import validate
from keras_largebatch.schedules import batch as batch_lib
from keras_largebatch.schedules.batch import BATCH_SIZE_FIX
from keras_largebatch.schedules.learning_rate import EpochSchedule, as_schedule
from keras_largebatch.schedules.progress import Progress
from keras_largebatch.schedules.scaling import RULES, scale_factor_at

_register = keras.saving.register_keras_serializable(package="keras_largebatch")
_serialize = keras.saving.serialize_keras_object


class _BatchComposed(EpochSchedule):
    """Base of the schedules that compose an LR schedule with a batch schedule."""

    def __init__(self, schedule, batch_schedule, progress: Progress | None = None):
        super().__init__(progress)
        self._schedule = as_schedule(schedule, "schedule")
        self._batch = batch_lib.get(batch_schedule)

    @property
    def batch_schedule(self) -> batch_lib.BatchSchedule:
        return self._batch

    @property
    def total_epochs(self) -> float | None:
        return self._schedule.total_epochs

    def get_config(self) -> dict:
        return {"schedule": _serialize(self._schedule), "batch_schedule": _serialize(self._batch)}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["schedule"] = as_schedule(config["schedule"], "schedule")
        config["batch_schedule"] = batch_lib.get(config["batch_schedule"])
        return cls(**config)


@_register
class BatchScheduleMultiplier(_BatchComposed):
    """`schedule(e) * batch_schedule.lr_multiplier(e)`: AdaBatch's LR decay on top of a schedule."""

    def _value_at(self, epoch):
        return self._schedule.value_at(epoch) * self._batch.lr_multiplier_at(epoch)


@_register
class BatchScaled(_BatchComposed):
    """`schedule(e) * scale(m(e) / reference_batch_size)` for the current batch size m(e).

    Defaults (reference 1, linear) give seed 001's sum-of-gradients view: `schedule` is the
    base learning rate eta~ = eta / m and the optimizer applies eta~ * m.
    """

    def __init__(
        self,
        schedule,
        batch_schedule,
        reference_batch_size: int = 1,
        rule: str = "linear",
        progress: Progress | None = None,
    ):
        super().__init__(schedule, batch_schedule, progress)
        self._reference = validate.whole("reference_batch_size", reference_batch_size,
                                         fix=BATCH_SIZE_FIX)
        self._rule = validate.one_of("rule", rule, RULES)

    def get_config(self) -> dict:
        return {**super().get_config(), "reference_batch_size": self._reference,
                "rule": self._rule}

    def _value_at(self, epoch):
        factor = scale_factor_at(self._batch.batch_size_at(epoch), self._reference, self._rule)
        return self._schedule.value_at(epoch) * factor
