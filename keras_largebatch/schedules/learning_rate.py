"""Learning-rate schedules keyed on the fractional epoch, as Keras `LearningRateSchedule`s.

    schedule = LinearWarmup(
        StepDecay(0.1, boundary_fractions=[0.5, 0.75], total_epochs=82),  # /10 at 50%, 75%
        warmup_fraction=0.05, start_factor=1 / 32)  # seed 001: eta/32 -> eta over 5%
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)

Keras calls `schedule(step)` with the optimizer's iteration count; these schedules ignore it and
read `progress.epoch`, the fractional epoch epoch_index + step_in_epoch / steps_per_epoch: steps
per epoch change whenever the batch size does, so a step count is not a fixed point of training
while an epoch is (progress.py). The `Progress` is the one given to the constructor, else the
process-wide `default_progress()` looked up at call time, so a schedule built (or deserialised)
before `set_default_progress` installs another Progress still follows it. The framework loop
advances the Progress inside its train step; under `model.fit`, `ProgressCallback` does.

Only the outermost schedule reads the Progress: nested schedules are evaluated at the same epoch
through `value_at(epoch)`, so `LinearWarmup(PolynomialDecay(...))` has one clock. Every schedule
also has `value(epoch)` (eager, Python float) for plots and checks.

Schedules:

- `Constant(value)`.
- `LinearWarmup(after, warmup_epochs | warmup_fraction, start_factor | start_value)`: from
  `start_factor * after(e)` (or the absolute `start_value`) linearly up to `after(e)` at
  `warmup_epochs`, then `after(e)`. Seed 001 (Goyal et al.): start_factor=1/32 over 5% of
  training; seed 000: 5 epochs from the reference-batch LR, start_factor = m_ref / m; seed 004
  footnote 2: start_value=0.001 over 2-2.5 epochs. The ramp is per update (the epoch is
  fractional), not per epoch. `after` keeps its own clock: the warmup does not shift it.
- `PolynomialDecay(initial, end, total_epochs, power=2)`: seed 004 Algorithm 1,
  gamma_t = (gamma_0 - end) * (1 - t/T)^power + end, `end` after T; `start_epoch` holds
  `initial` until then and decays over [start_epoch, T].
- `StepDecay(initial, boundaries_epochs | boundary_fractions + total_epochs | every_epochs,
  factor=0.1)`: times `factor` at each boundary reached (inclusive).

Learning rates that follow a batch-size schedule: batch_coupled.py.

Serialization: every schedule is registered (package "keras_largebatch") and `get_config` holds
nested schedules as `keras.saving.serialize_keras_object` dicts, so an optimizer's
`get_config`/`from_config` rebuilds the whole tree, JSON included. The Progress is not part of
the config: a deserialised schedule reads `default_progress()`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules.progress import Progress, clock_dtypes, default_progress

_register = keras.saving.register_keras_serializable(package="keras_largebatch")


def _check_rate(name: str, value) -> float:
    if not validate.is_real(value) or not math.isfinite(value) or value < 0:
        raise UserInputError(f"{name}={value!r} must be a finite learning rate >= 0")
    return float(value)


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base class: a learning rate as a function of the fractional epoch.

    Subclasses implement `_value_at(epoch)` (float64 tensor in, float64 tensor out) and
    `get_config`; nested schedules go through `_serialize` / `_deserialize`.
    """

    def __init__(self, progress: Progress | None = None):
        if progress is not None and not isinstance(progress, Progress):
            raise UserInputError(
                f"progress={progress!r} is not a keras_largebatch Progress; pass one or None"
            )
        self._progress = progress

    @property
    def progress(self) -> Progress:
        """The explicit Progress, else the process-wide default (looked up on every call)."""
        if self._progress is not None:
            return self._progress
        return default_progress()

    @property
    def total_epochs(self) -> float | None:
        """Length of training if this schedule knows it (used to validate warmups)."""
        return None

    def __call__(self, step):
        # Keyed on epochs: `step` (the optimizer's iterations) only locates the update inside
        # the epoch when ProgressCallback linked the clock to it (progress.py).
        epoch = self.progress.epoch_at(step)
        return ops.cast(self.value_at(epoch), "float32")

    def value_at(self, epoch):
        """The learning rate at an epoch tensor (float64; float32 on JAX without x64)."""
        return self._value_at(ops.cast(epoch, clock_dtypes()[0]))

    def value(self, epoch: float) -> float:
        """Eager helper: the learning rate at `epoch` as a Python float."""
        epoch = validate.epochs("epoch", epoch)
        dtype = clock_dtypes()[0]
        return float(ops.convert_to_numpy(self.value_at(ops.convert_to_tensor(epoch, dtype))))

    def _value_at(self, epoch):
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def as_schedule(value, name: str = "schedule") -> EpochSchedule:
    """An EpochSchedule from a schedule, a number (Constant) or a serialized config."""
    if isinstance(value, dict):
        value = keras.saving.deserialize_keras_object(value)
    if isinstance(value, EpochSchedule):
        return value
    if validate.is_real(value):
        return Constant(_check_rate(name, value))  # the error names `name`, not "value"
    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        raise UserInputError(
            f"{name}={value!r} is a step-keyed Keras schedule; nest only keras_largebatch "
            "epoch schedules (Constant, LinearWarmup, PolynomialDecay, StepDecay, ...)"
        )
    raise UserInputError(
        f"{name}={value!r} is not a learning rate; give a number or a keras_largebatch "
        "epoch schedule"
    )


def _serialize(obj) -> dict:
    return keras.saving.serialize_keras_object(obj)


def _warmup_total(name: str, total_epochs, inner: EpochSchedule) -> float | None:
    if total_epochs is not None:
        return validate.epochs(name, total_epochs, positive=True)
    return inner.total_epochs


# ---- Base schedules. ----------------------------------------------------------------------------


@_register
class Constant(EpochSchedule):
    """The same learning rate at every epoch."""

    def __init__(self, value: float, progress: Progress | None = None):
        super().__init__(progress)
        self._const = _check_rate("value", value)

    def get_config(self) -> dict:
        return {"value": self._const}

    def _value_at(self, epoch):
        return ops.convert_to_tensor(self._const, epoch.dtype) + 0.0 * epoch


@_register
class PolynomialDecay(EpochSchedule):
    """(initial - end) * (1 - t)^power + end, t = (epoch - start_epoch)/(total - start) in [0, 1].

    Seed 004 Algorithm 1 is `PolynomialDecay(gamma_0, 0.0, T, power=2)`.
    """

    def __init__(
        self,
        initial: float,
        end: float,
        total_epochs: float,
        power: float = 2.0,
        *,
        start_epoch: float = 0.0,
        progress: Progress | None = None,
    ):
        super().__init__(progress)
        self._initial = _check_rate("initial", initial)
        self._end = _check_rate("end", end)
        self._total = validate.epochs("total_epochs", total_epochs, positive=True)
        self._power = validate.positive("power", power, fix="2 is seed 004's poly(2)")
        self._start = validate.epochs("start_epoch", start_epoch)
        if self._start >= self._total:
            raise UserInputError(
                f"start_epoch={start_epoch!r} is not before total_epochs={total_epochs!r}; "
                "start the decay earlier"
            )

    @property
    def total_epochs(self) -> float:
        return self._total

    def get_config(self) -> dict:
        return {
            "initial": self._initial,
            "end": self._end,
            "total_epochs": self._total,
            "power": self._power,
            "start_epoch": self._start,
        }

    def _value_at(self, epoch):
        t = ops.clip((epoch - self._start) / (self._total - self._start), 0.0, 1.0)
        power = ops.convert_to_tensor(self._power, epoch.dtype)
        return (self._initial - self._end) * ops.power(1.0 - t, power) + self._end


@_register
class StepDecay(EpochSchedule):
    """`initial * factor ** (number of boundaries <= epoch)`.

    Give the boundaries one way: `boundaries_epochs=[41, 61.5]`, or
    `boundary_fractions=[0.5, 0.75], total_epochs=82` (seed 001), or `every_epochs=20`
    (seed 000, open-ended).
    """

    def __init__(
        self,
        initial: float,
        boundaries_epochs=None,
        *,
        boundary_fractions=None,
        total_epochs: float | None = None,
        every_epochs: float | None = None,
        factor: float = 0.1,
        progress: Progress | None = None,
    ):
        super().__init__(progress)
        self._initial = _check_rate("initial", initial)
        self._factor = validate.positive("factor", factor, fix="0.1 divides the LR by 10")
        given = [
            n
            for n, v in (
                ("boundaries_epochs", boundaries_epochs),
                ("boundary_fractions", boundary_fractions),
                ("every_epochs", every_epochs),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise UserInputError(
                f"StepDecay got {given or 'none'} of boundaries_epochs / boundary_fractions / "
                "every_epochs; give exactly one"
            )
        self._total = (
            None
            if total_epochs is None
            else validate.epochs("total_epochs", total_epochs, positive=True)
        )
        self._given = (boundaries_epochs, boundary_fractions, every_epochs)
        self._every = None
        fix = "give strictly increasing values"
        if boundaries_epochs is not None:
            bounds = [
                validate.epochs("boundaries_epochs", b, positive=True) for b in boundaries_epochs
            ]
            self._bounds = validate.increasing("boundaries_epochs", bounds, fix=fix)
            if self._total is not None and any(b > self._total for b in self._bounds):
                raise UserInputError(
                    f"boundaries_epochs={self._bounds!r} go past total_epochs={total_epochs!r}"
                )
        elif boundary_fractions is not None:
            if self._total is None:
                raise UserInputError(
                    f"boundary_fractions={list(boundary_fractions)!r} needs total_epochs"
                )
            fracs = [
                validate.in_range("boundary_fractions", f, 0, 1, low_open=True, high_open=True,
                                  fix="give fractions of total_epochs, e.g. [0.5, 0.75]")
                for f in boundary_fractions
            ]
            validate.increasing("boundary_fractions", fracs, fix=fix)
            self._bounds = [f * self._total for f in fracs]
        else:
            self._every = validate.epochs("every_epochs", every_epochs, positive=True)
            self._bounds = None

    @property
    def total_epochs(self) -> float | None:
        return self._total

    def get_config(self) -> dict:
        bounds, fracs, every = self._given
        return {
            "initial": self._initial,
            "boundaries_epochs": None if bounds is None else list(bounds),
            "boundary_fractions": None if fracs is None else list(fracs),
            "total_epochs": self._total,
            "every_epochs": every,
            "factor": self._factor,
        }

    def _value_at(self, epoch):
        if self._every is not None:
            count = ops.floor(epoch / self._every)
        elif self._bounds:
            bounds = ops.convert_to_tensor(np.asarray(self._bounds), epoch.dtype)
            count = ops.sum(ops.cast(ops.greater_equal(epoch, bounds), epoch.dtype))
        else:
            count = ops.zeros_like(epoch)
        return self._initial * ops.power(ops.convert_to_tensor(self._factor, epoch.dtype), count)


# ---- A schedule wrapping another. --------------------------------------------------------------


@_register
class LinearWarmup(EpochSchedule):
    """Linear ramp into `after` over the first `warmup_epochs` (or `warmup_fraction` of training).

    lr(e) = s + (after(e) - s) * min(e / W, 1), with s = start_factor * after(e) or s = start_value
    (default start_factor 0). `warmup_fraction` needs `total_epochs`, here or on `after`
    (PolynomialDecay and StepDecay with total_epochs know it).
    """

    def __init__(
        self,
        after,
        warmup_epochs: float | None = None,
        start_factor: float | None = None,
        *,
        start_value: float | None = None,
        warmup_fraction: float | None = None,
        total_epochs: float | None = None,
        progress: Progress | None = None,
    ):
        super().__init__(progress)
        self._after = as_schedule(after, "after")
        self._total = _warmup_total("total_epochs", total_epochs, self._after)
        self._total_given = total_epochs is not None
        if (warmup_epochs is None) == (warmup_fraction is None):
            raise UserInputError(
                f"LinearWarmup got warmup_epochs={warmup_epochs!r} and "
                f"warmup_fraction={warmup_fraction!r}; give exactly one"
            )
        self._warmup_epochs_arg = warmup_epochs
        self._warmup_fraction = warmup_fraction
        if warmup_fraction is not None:
            fraction = validate.in_range("warmup_fraction", warmup_fraction, 0, 1,
                                         fix="0.05 warms up over the first 5% of training")
            if self._total is None:
                raise UserInputError(
                    f"warmup_fraction={warmup_fraction!r} needs total_epochs (here or on the "
                    "wrapped schedule)"
                )
            self._warmup = fraction * self._total
        else:
            self._warmup = validate.epochs("warmup_epochs", warmup_epochs)
        if self._total is not None and self._warmup > self._total:
            raise UserInputError(
                f"warmup_epochs={self._warmup!r} is longer than training "
                f"(total_epochs={self._total!r}); shorten the warmup"
            )
        if start_factor is not None and start_value is not None:
            raise UserInputError(
                f"LinearWarmup got start_factor={start_factor!r} and start_value="
                f"{start_value!r}; give at most one"
            )
        self._start_value = None if start_value is None else _check_rate("start_value", start_value)
        self._start_factor = None
        if start_value is None:
            factor = 0.0 if start_factor is None else start_factor
            if not validate.is_real(factor) or not math.isfinite(factor) or factor < 0:
                raise UserInputError(
                    f"start_factor={start_factor!r} must be a finite number >= 0 (1/32 in seed 001)"
                )
            self._start_factor = float(factor)

    @property
    def warmup_epochs(self) -> float:
        return self._warmup

    @property
    def total_epochs(self) -> float | None:
        return self._total

    def get_config(self) -> dict:
        return {
            "after": _serialize(self._after),
            "warmup_epochs": self._warmup_epochs_arg,
            "start_factor": self._start_factor,
            "start_value": self._start_value,
            "warmup_fraction": self._warmup_fraction,
            "total_epochs": self._total if self._total_given else None,
        }

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["after"] = as_schedule(config["after"], "after")
        return cls(**config)

    def _value_at(self, epoch):
        target = self._after.value_at(epoch)
        if self._warmup == 0:
            return target
        t = ops.minimum(epoch / self._warmup, 1.0)
        if self._start_value is not None:
            start = ops.convert_to_tensor(self._start_value, epoch.dtype)
        else:
            start = self._start_factor * target
        return start + (target - start) * t
