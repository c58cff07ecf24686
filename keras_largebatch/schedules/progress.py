"""The schedules' clock: training progress as a fractional epoch, held in Keras variables.

**The rule: every schedule is keyed on the fractional epoch, never on steps.**

    epoch = epoch_index + step_in_epoch / steps_per_epoch

Steps per epoch change whenever the batch size changes (an AdaBatch phase that doubles the batch
halves the steps), so "step 1000" is a different point of training under different batch
schedules, while "epoch 12.5" is not. So every learning-rate schedule in
`keras_largebatch.schedules` reads the epoch of a `Progress`, and every batch-size schedule is a
function of the same epoch.

**Who advances it.** Two drivers, one per training loop:

- The framework loop (TensorFlow) calls `begin_epoch` on the host at the start of every epoch and
  `advance` inside its compiled train step after each optimizer update, so update k of epoch i
  reads i + k / steps_per_epoch in the `epoch` variable.
- Under plain `model.fit` (any backend), `keras_largebatch.schedules.ProgressCallback` calls
  `begin_epoch(i, steps, iteration=optimizer.iterations)` before every epoch. That links the
  clock to the optimizer's iteration count t, which Keras passes to every schedule:

      epoch(t) = epoch_index + (t - iteration_origin) / steps_per_epoch

  evaluated inside the train step (`Progress.epoch_at(t)`), so a jitted JAX step, which only
  sees variables of its state, still moves the learning rate every update: the three values
  above change only between epochs, where every backend re-reads its state (on JAX the callback
  adds them to the optimizer's variables for the duration of `fit`, see keras_fit.py).
  `iteration_origin = -1` means "not linked": the schedule reads the `epoch` variable.

**Never driven is an error.** A schedule whose Progress no driver has touched would train at
its epoch-0 value forever (a `LinearWarmup` starting at 0 never leaves LR 0), so the first
evaluation raises `UserInputError` instead. Without either driver, `follow_iterations(steps)`
is the documented step-based fallback: epoch = optimizer.iterations / steps (fixed batch size).

**One process-wide clock.** `default_progress()` returns a single process-global `Progress`. A
schedule built without an explicit `progress=` (in particular one deserialised from a config,
which cannot carry a variable) reads it at call time, and the framework loop and
`ProgressCallback` drive the same object by default. `set_default_progress` replaces it. Pass an
explicit `Progress` to a schedule and to its driver to use a private clock instead.

Variables: `epoch` (float64), `epoch_index`, `step_in_epoch`, `steps_per_epoch`, `samples_seen`
(int64) -- the five the framework loop checkpoints (training/checkpoint.py) -- and
`iteration_origin` (int64, the model.fit link; re-set by the callback every epoch, not
checkpointed). On JAX without 64-bit mode they are float32 / int32 (`clock_dtypes`).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_largebatch.errors import UserInputError

_default_progress: Progress | None = None


def clock_dtypes() -> tuple[str, str]:
    """(float, int) dtypes of the clock: 64-bit, except on JAX without `jax_enable_x64`."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "float32", "int32"
    return "float64", "int64"


class Progress:
    """Fractional epoch, samples seen and step-in-epoch as non-trainable Keras variables.

    Create it under `strategy.scope()` when training with a distribution strategy.
    """

    def __init__(self, name: str = "progress"):
        self.name = name
        fdt, idt = clock_dtypes()
        self._float, self._int = fdt, idt

        def var(value, dtype, var_name):
            return keras.Variable(value, dtype=dtype, trainable=False, name=var_name,
                                  aggregation="only_first_replica")

        self.epoch = var(0.0, fdt, "epoch")
        self.epoch_index = var(0, idt, "epoch_index")
        self.step_in_epoch = var(0, idt, "step_in_epoch")
        self.steps_per_epoch = var(1, idt, "steps_per_epoch")
        self.samples_seen = var(0, idt, "samples_seen")
        self.iteration_origin = var(-1, idt, "iteration_origin")
        self.driven = False  # set by the first begin_epoch / follow_iterations (host side)

    @property
    def clock_variables(self) -> list:
        """The variables a schedule reads inside the train step (model.fit link included)."""
        return [self.epoch, self.epoch_index, self.steps_per_epoch, self.iteration_origin]

    def begin_epoch(self, epoch_index: int, steps_per_epoch: int, step_in_epoch: int = 0,
                    iteration: int | None = None):
        """Host-side: start (or resume inside) epoch `epoch_index`.

        `iteration`: the optimizer's iteration count now (model.fit); links the clock to it
        (module docstring). Without it the clock is the `epoch` variable (framework loop).
        """
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1. Received: {steps_per_epoch}")
        self.driven = True
        self.epoch_index.assign(epoch_index)
        self.steps_per_epoch.assign(steps_per_epoch)
        self.step_in_epoch.assign(step_in_epoch)
        origin = -1 if iteration is None else int(iteration) - int(step_in_epoch)
        self.iteration_origin.assign(origin)
        self._refresh()

    def follow_iterations(self, steps_per_epoch: int):
        """The step-based fallback: epoch = optimizer.iterations / steps_per_epoch from now on.

        For a schedule used with neither the framework loop nor `ProgressCallback` (a custom
        loop, or `fit` without the callback) and a fixed number of steps per epoch.
        """
        self.begin_epoch(0, steps_per_epoch, iteration=0)

    def advance(self, samples):
        """In-graph: one update done on `samples` distinct training samples."""
        _add(self.step_in_epoch, 1)
        _add(self.samples_seen, ops.cast(samples, self._int))
        self._refresh()

    def set_fraction(self, epoch_index: int, step_in_epoch: int, steps_per_epoch: int):
        """Position = batch `step_in_epoch` of `epoch_index` (keeps the iteration link)."""
        self.driven = True
        self.epoch_index.assign(epoch_index)
        self.steps_per_epoch.assign(steps_per_epoch)
        self.step_in_epoch.assign(step_in_epoch)
        self._refresh()

    def _refresh(self):
        self.epoch.assign(
            ops.cast(self.epoch_index, self._float)
            + ops.cast(self.step_in_epoch, self._float)
            / ops.cast(self.steps_per_epoch, self._float)
        )

    def epoch_at(self, iteration=None):
        """The fractional epoch as a tensor, for optimizer iteration `iteration`.

        Linked to the iterations (model.fit): epoch_index + (iteration - origin) / steps;
        otherwise (framework loop, or `iteration` None) the `epoch` variable. Raises
        `UserInputError` if no driver ever touched this Progress (module docstring).
        """
        if not self.driven:
            raise UserInputError(
                "an epoch-keyed keras_largebatch schedule was evaluated but nothing drives its "
                "Progress, so it would stay at epoch 0 (e.g. a LinearWarmup from 0 would train "
                "at LR 0); add keras_largebatch.schedules.ProgressCallback() to model.fit's "
                "callbacks, use fit_with_batch_schedule, or call "
                "progress.follow_iterations(steps_per_epoch) for a step-based clock"
            )
        epoch = ops.convert_to_tensor(self.epoch)
        if iteration is None:
            return epoch
        fdt = self._float
        origin = ops.convert_to_tensor(self.iteration_origin)
        linked = ops.cast(self.epoch_index, fdt) + (
            ops.cast(iteration, fdt) - ops.cast(origin, fdt)
        ) / ops.cast(self.steps_per_epoch, fdt)
        return ops.where(ops.greater_equal(origin, 0), linked, epoch)


def _add(variable, delta):
    """variable += delta; on TensorFlow one atomic AssignAddVariableOp on the underlying
    tf.Variable (Keras' `assign_add` reads, adds and assigns; inside the framework loop's
    multi-replica step that extra read made the replica-invariance check of
    tests/training/test_step.py flaky, never with the atomic op)."""
    if keras.backend.backend() == "tensorflow":
        variable.value.assign_add(ops.cast(delta, variable.dtype))
    else:
        variable.assign_add(delta)


def default_progress() -> Progress:
    """The process-wide Progress that schedules use when none is given.

    Schedules deserialised from a config (which cannot carry a variable) attach to this one; the
    framework loop and `ProgressCallback` drive the same object, so the pairing needs no wiring.
    """
    global _default_progress
    if _default_progress is None:
        _default_progress = Progress()
    return _default_progress


def set_default_progress(progress: Progress | None) -> None:
    """Replace the process-wide Progress; None makes the next `default_progress()` build one."""
    global _default_progress
    _default_progress = progress
