"""The schedules' clock: training progress as a fractional epoch, held in TF variables.

**The rule: every schedule is keyed on the fractional epoch, never on steps.**

    epoch = epoch_index + step_in_epoch / steps_per_epoch

Steps per epoch change whenever the batch size changes (an AdaBatch phase that doubles the batch
halves the steps), so "step 1000" is a different point of training under different batch
schedules, while "epoch 12.5" is not. So every learning-rate schedule in
`keras_largebatch.schedules` reads `Progress.epoch` and ignores the optimizer's iteration count,
and every batch-size schedule is a function of the same epoch.

**Who advances it.** The framework loop calls `begin_epoch` on the host at the start of every
epoch and `advance` inside its compiled train step after each optimizer update, so update k of
epoch i reads i + k / steps_per_epoch. Under plain `model.fit`,
`keras_largebatch.schedules.ProgressCallback` sets the same value before every training batch.
Apart from a checkpoint restore, nothing else moves it.

**One process-wide clock.** `default_progress()` returns a single process-global `Progress`. A
schedule built without an explicit `progress=` (in particular one deserialised from a config,
which cannot carry a variable) reads it at call time, and the framework loop and
`ProgressCallback` drive the same object by default, so schedule and driver pair up without any
wiring. `set_default_progress` replaces it (a test installing a fresh one, say). Pass an explicit
`Progress` to a schedule and to its driver to use a private clock instead.

All variables live in one `Progress` object so one `tf.train.Checkpoint` entry restores them.
"""

from __future__ import annotations

import tensorflow as tf

_default_progress: Progress | None = None


class Progress(tf.Module):
    """Fractional epoch, samples seen and step-in-epoch as non-trainable variables.

    Create it under `strategy.scope()` when training with a distribution strategy.
    """

    def __init__(self, name: str = "progress"):
        super().__init__(name=name)
        kw = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.epoch = tf.Variable(0.0, dtype=tf.float64, name="epoch", **kw)
        self.epoch_index = tf.Variable(0, dtype=tf.int64, name="epoch_index", **kw)
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, name="step_in_epoch", **kw)
        self.steps_per_epoch = tf.Variable(1, dtype=tf.int64, name="steps_per_epoch", **kw)
        self.samples_seen = tf.Variable(0, dtype=tf.int64, name="samples_seen", **kw)

    def begin_epoch(self, epoch_index: int, steps_per_epoch: int, step_in_epoch: int = 0):
        """Host-side: start (or resume inside) epoch `epoch_index`."""
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1. Received: {steps_per_epoch}")
        self.epoch_index.assign(epoch_index)
        self.steps_per_epoch.assign(steps_per_epoch)
        self.step_in_epoch.assign(step_in_epoch)
        self._refresh()

    def advance(self, samples):
        """In-graph: one update done on `samples` distinct training samples."""
        self.step_in_epoch.assign_add(1)
        self.samples_seen.assign_add(tf.cast(samples, tf.int64))
        self._refresh()

    def set_fraction(self, epoch_index: int, step_in_epoch: int, steps_per_epoch: int):
        """Used by `ProgressCallback`: position = batch `step_in_epoch` of `epoch_index`."""
        self.begin_epoch(epoch_index, steps_per_epoch, step_in_epoch)

    def _refresh(self):
        self.epoch.assign(
            tf.cast(self.epoch_index, tf.float64)
            + tf.cast(self.step_in_epoch, tf.float64)
            / tf.cast(self.steps_per_epoch, tf.float64)
        )


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
