"""Batch-size schedules: the global batch size and the LR multiplier at every epoch.

    schedule = AdaBatch(128, interval_epochs=20, growth_factor=2, lr_decay=0.75)
    schedule.batch_size(41.5)        # 512   (host-side, any fractional epoch)
    schedule.lr_multiplier(41.5)     # 0.5625 = 0.75 ** 2
    schedule.phases(100)             # [Phase(0, 20, 128, 1.0), Phase(20, 40, 256, 0.75), ...]
    schedule.lr_multiplier_at(epoch_tensor)   # the same, in-graph (float64 tensor)

Three kinds:

- `FixedBatch(batch_size)`: one batch size, multiplier 1.
- `PiecewiseBatch(boundaries_epochs, batch_sizes, lr_multipliers=None)`: seed 002's "Manual"
  schedule, e.g. 32 doubling every 25 epochs is `PiecewiseBatch([25, 50, 75], [32, 64, 128, 256])`.
- `AdaBatch(initial_batch_size, interval_epochs, growth_factor=2, lr_decay=1.0,
  max_batch_size=None)`: seed 000. Every `interval_epochs` the batch is multiplied by
  `growth_factor` and the learning rate by `lr_decay`.

**What "effective alpha/r" means (seed 000, Eq. 2-5).** The update is W <- W - (alpha/r) sum_i dW_i,
with alpha the learning rate applied to the *mean* gradient and r the batch size; alpha/r is the
step per sample. Growing r by `growth_factor` and multiplying alpha by `lr_decay` multiplies
alpha/r by `lr_decay / growth_factor`, the `effective_decay`: 0.75 / 2 = 0.375 in Section 4.1 (so
the fixed-batch baselines decay by 0.375), 0.2 / 2 = 0.4 / 4 = 0.8 / 8 = 0.1 in Section 4.3 (the
fixed baselines decay by 0.1 every 30 epochs). `lr_multiplier` is the factor on alpha, i.e. on the
learning rate the optimizer applies to the mean gradient: `lr_decay ** k` in interval k.

**`max_batch_size` keeps alpha/r on schedule.** Once growth is capped the batch stops growing, so
the learning rate takes over the whole effective decay: in interval k the multiplier is
`effective_decay ** k * batch_k / initial_batch_size`, which equals `lr_decay ** k` while uncapped
and falls by `effective_decay` per interval once capped (partially, if the cap is not a whole
power of `growth_factor` away). The per-sample step alpha/r therefore follows exactly the same
curve with or without the cap - the property seed 000 relies on to compare against fixed-batch
runs.

**Phase boundaries are whole epochs.** A batch size never changes inside an epoch, so an epoch
has one `steps_per_epoch` and the fractional epoch of `Progress` stays well defined; this is also
what repeated `model.fit(initial_epoch=...)` calls can express. Learning-rate schedules may still
use fractional epochs (warmup over 5% of 82 epochs).

Host-side methods take Python floats; `batch_size_at` / `lr_multiplier_at` take a float64 tensor
(e.g. `progress.epoch`) and are what the learning-rate compositions in `batch_coupled.py` call
inside the train step. All schedules serialize with `get_config` / `from_config` and are
registered with Keras (package "keras_largebatch").
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError

# What every batch-size check asks for (the learning-rate side reuses it).
BATCH_SIZE_FIX = "give a positive integer number of samples"


# --------------------------------------------------------------------------------------------
# Phases and the base class.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs [start_epoch, end_epoch) trained with one global batch size and LR multiplier."""

    start_epoch: int
    end_epoch: int
    batch_size: int
    lr_multiplier: float


class BatchSchedule:
    """Base class: subclasses implement the four `_` hooks and `get_config`."""

    def batch_size(self, epoch: float) -> int:
        """Global batch size at (fractional) `epoch`."""
        return self._batch_size(validate.epochs("epoch", epoch))

    def lr_multiplier(self, epoch: float) -> float:
        """Factor on the learning rate (applied to the mean gradient) at `epoch`."""
        return self._lr_multiplier(validate.epochs("epoch", epoch))

    def batch_size_at(self, epoch):
        """In-graph `batch_size`: a float tensor of the epoch tensor's dtype (keras.ops)."""
        return self._batch_size_at(_float_epoch(epoch))

    def lr_multiplier_at(self, epoch):
        """In-graph `lr_multiplier`: a float tensor of the epoch tensor's dtype (keras.ops)."""
        return self._lr_multiplier_at(_float_epoch(epoch))

    def phases(self, total_epochs: int) -> list[Phase]:
        """Maximal runs of whole epochs in [0, total_epochs) with one (batch, LR multiplier).

        The loop rebuilds the input pipeline where `batch_size` changes; where only the
        multiplier changes (a capped AdaBatch) the pipeline can stay, the LR composition reads
        the multiplier in-graph.
        """
        total = validate.whole(
            "total_epochs", total_epochs, minimum=1, fix="train for at least one epoch"
        )
        phases: list[Phase] = []
        for epoch in range(total):
            batch, mult = (
                self._batch_size(float(epoch)),
                self._lr_multiplier(float(epoch)),
            )
            last = phases[-1] if phases else None
            if last and last.batch_size == batch and last.lr_multiplier == mult:
                phases[-1] = dataclasses.replace(last, end_epoch=epoch + 1)
            else:
                phases.append(Phase(epoch, epoch + 1, batch, mult))
        return phases

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def _batch_size(self, epoch: float) -> int:
        raise NotImplementedError

    def _lr_multiplier(self, epoch: float) -> float:
        raise NotImplementedError

    def _batch_size_at(self, epoch):
        raise NotImplementedError

    def _lr_multiplier_at(self, epoch):
        raise NotImplementedError


def _float_epoch(epoch):
    """A float tensor for the epoch (kept float64 / float32; anything else -> float64)."""
    epoch = ops.convert_to_tensor(epoch)
    if keras.backend.standardize_dtype(epoch.dtype) in ("float32", "float64"):
        return epoch
    from keras_largebatch.schedules.progress import clock_dtypes

    return ops.cast(epoch, clock_dtypes()[0])


def _const(value, like):
    return ops.convert_to_tensor(value, like.dtype)


# --------------------------------------------------------------------------------------------
# FixedBatch, PiecewiseBatch, AdaBatch.
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="keras_largebatch")
class FixedBatch(BatchSchedule):
    """One global batch size for the whole run; LR multiplier 1."""

    def __init__(self, batch_size: int):
        self._size = validate.whole("batch_size", batch_size, fix=BATCH_SIZE_FIX)

    def get_config(self) -> dict:
        return {"batch_size": self._size}

    def _batch_size(self, epoch):
        return self._size

    def _lr_multiplier(self, epoch):
        return 1.0

    def _batch_size_at(self, epoch):
        return _const(float(self._size), epoch)

    def _lr_multiplier_at(self, epoch):
        return _const(1.0, epoch)


@keras.saving.register_keras_serializable(package="keras_largebatch")
class PiecewiseBatch(BatchSchedule):
    """`batch_sizes[i]` from epoch `boundaries_epochs[i-1]` (inclusive) to `boundaries_epochs[i]`.

    `lr_multipliers` (same length as `batch_sizes`, default all 1.0) couples an LR factor to
    each piece. Boundaries are whole, strictly increasing epochs > 0.
    """

    def __init__(self, boundaries_epochs, batch_sizes, lr_multipliers=None):
        fix = "give whole epochs > 0 in increasing order"
        bounds = [
            validate.whole("boundaries_epochs", b, minimum=1, fix=fix) for b in boundaries_epochs
        ]
        self._bounds = validate.increasing("boundaries_epochs", bounds, fix=fix)
        self._sizes = [validate.whole("batch_sizes", b, fix=BATCH_SIZE_FIX) for b in batch_sizes]
        if len(self._sizes) != len(self._bounds) + 1:
            raise UserInputError(
                f"batch_sizes={list(batch_sizes)!r} needs exactly one more entry than "
                f"boundaries_epochs={self._bounds!r}"
            )
        if lr_multipliers is None:
            self._mults = None
        else:
            self._mults = [
                validate.positive("lr_multipliers", m, fix="give one factor > 0 per batch size")
                for m in lr_multipliers
            ]
            if len(self._mults) != len(self._sizes):
                raise UserInputError(
                    f"lr_multipliers={list(lr_multipliers)!r} needs one entry per batch size "
                    f"({len(self._sizes)})"
                )

    def get_config(self) -> dict:
        return {
            "boundaries_epochs": list(self._bounds),
            "batch_sizes": list(self._sizes),
            "lr_multipliers": None if self._mults is None else list(self._mults),
        }

    def _piece(self, epoch: float) -> int:
        return sum(1 for b in self._bounds if epoch >= b)

    def _piece_at(self, epoch):
        if not self._bounds:
            return ops.convert_to_tensor(0, "int32")
        bounds = _const(np.asarray(self._bounds, np.float64), epoch)
        return ops.sum(ops.cast(ops.greater_equal(epoch, bounds), "int32"))

    def _batch_size(self, epoch):
        return self._sizes[self._piece(epoch)]

    def _lr_multiplier(self, epoch):
        return 1.0 if self._mults is None else self._mults[self._piece(epoch)]

    def _batch_size_at(self, epoch):
        sizes = _const(np.asarray(self._sizes, np.float64), epoch)
        return ops.take(sizes, self._piece_at(epoch))

    def _lr_multiplier_at(self, epoch):
        if self._mults is None:
            return _const(1.0, epoch)
        return ops.take(_const(np.asarray(self._mults), epoch), self._piece_at(epoch))


@keras.saving.register_keras_serializable(package="keras_largebatch")
class AdaBatch(BatchSchedule):
    """Seed 000: batch x `growth_factor` and LR x `lr_decay` every `interval_epochs`.

    Seed 000 Section 4.1: `AdaBatch(128, 20, growth_factor=2, lr_decay=0.75)` (effective alpha/r
    decay 0.375). Section 4.2: `AdaBatch(1024, 20, 2, lr_decay=0.5)` plus a 5-epoch warmup.
    Section 4.3: `AdaBatch(8192, 30, growth_factor=2, lr_decay=0.2)`, `(..., 4, 0.4)`,
    `(..., 8, 0.8)`: effective decay 0.1 each. The default `lr_decay=1.0` lets the batch growth
    alone decay alpha/r by `1 / growth_factor` per interval. See the module docstring for what
    `max_batch_size` does to the multiplier.

    `growth_factor` is a whole number >= 1 so that every batch size is an integer.
    """

    def __init__(
        self,
        initial_batch_size: int,
        interval_epochs: int,
        growth_factor: int = 2,
        lr_decay: float = 1.0,
        max_batch_size: int | None = None,
    ):
        self._b0 = validate.whole("initial_batch_size", initial_batch_size, fix=BATCH_SIZE_FIX)
        self._interval = validate.whole(
            "interval_epochs",
            interval_epochs,
            minimum=1,
            fix="batch phases change at whole epochs; give an integer >= 1",
        )
        self._growth = validate.whole(
            "growth_factor",
            growth_factor,
            minimum=1,
            fix="give an integer factor >= 1 (2 doubles the batch each interval)",
        )
        self._decay = validate.positive(
            "lr_decay",
            lr_decay,
            fix="e.g. 0.75 multiplies the LR by 0.75 each interval",
        )
        self._max = None
        if max_batch_size is not None:
            self._max = validate.whole("max_batch_size", max_batch_size, fix=BATCH_SIZE_FIX)
            if self._max < self._b0:
                raise UserInputError(
                    f"max_batch_size={max_batch_size!r} is below "
                    f"initial_batch_size={initial_batch_size!r}; raise it or drop the cap"
                )
        # First interval whose uncapped batch reaches the cap (None: never capped).
        self._cap_stage = None
        if self._max is not None and self._growth > 1:
            k = 0
            while self._b0 * self._growth**k < self._max:
                k += 1
            self._cap_stage = k

    @property
    def effective_decay(self) -> float:
        """Factor on alpha/r (the per-sample step) per interval: lr_decay / growth_factor."""
        return self._decay / self._growth

    def get_config(self) -> dict:
        return {
            "initial_batch_size": self._b0,
            "interval_epochs": self._interval,
            "growth_factor": self._growth,
            "lr_decay": self._decay,
            "max_batch_size": self._max,
        }

    def _stages(self, epoch: float) -> tuple[int, int]:
        k = int(math.floor(epoch / self._interval))
        kc = k if self._cap_stage is None else min(k, self._cap_stage)
        return k, kc

    def _batch_size(self, epoch):
        _, kc = self._stages(epoch)
        batch = self._b0 * self._growth**kc
        return batch if self._max is None else min(batch, self._max)

    def _lr_multiplier(self, epoch):
        k, kc = self._stages(epoch)
        uncapped = self._b0 * self._growth**kc
        capped = self._batch_size(epoch)
        return self._decay**kc * (capped / uncapped) * self.effective_decay ** (k - kc)

    def _stages_at(self, epoch):
        k = ops.floor(epoch / float(self._interval))
        kc = k if self._cap_stage is None else ops.minimum(k, float(self._cap_stage))
        return k, kc

    def _batch_size_at(self, epoch):
        _, kc = self._stages_at(epoch)
        batch = float(self._b0) * ops.power(_const(float(self._growth), epoch), kc)
        return batch if self._max is None else ops.minimum(batch, float(self._max))

    def _lr_multiplier_at(self, epoch):
        k, kc = self._stages_at(epoch)
        growth = _const(float(self._growth), epoch)
        uncapped = float(self._b0) * ops.power(growth, kc)
        capped = self._batch_size_at(epoch)
        decay = _const(self._decay, epoch)
        effective = _const(self.effective_decay, epoch)
        return ops.power(decay, kc) * (capped / uncapped) * ops.power(effective, k - kc)


def get(identifier) -> BatchSchedule:
    """A BatchSchedule from an instance, an integer (FixedBatch) or a serialized config."""
    if isinstance(identifier, BatchSchedule):
        return identifier
    if validate.is_real(identifier):
        return FixedBatch(identifier)
    if isinstance(identifier, dict):
        obj = keras.saving.deserialize_keras_object(identifier)
        if isinstance(obj, BatchSchedule):
            return obj
    raise UserInputError(
        f"batch_schedule={identifier!r} is not a batch schedule; give FixedBatch, "
        "PiecewiseBatch, AdaBatch or an integer batch size"
    )
