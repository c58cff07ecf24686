"""The schedules under plain `model.fit`: `ProgressCallback` and `fit_with_batch_schedule`.

**`ProgressCallback`** drives a `Progress` from `model.fit`, the Keras half of the schedule pair:

    progress = Progress()                   # or leave it out: default_progress()
    lr = LinearWarmup(PolynomialDecay(2.0, 0.0, 100), warmup_epochs=5, progress=progress)
    model.compile(optimizer=keras.optimizers.SGD(lr), ...)
    model.fit(dataset, epochs=100, callbacks=[ProgressCallback(progress)])

Before train batch k of epoch i the Progress reads

    epoch = i + k / steps_per_epoch

exactly what the framework loop's `begin_epoch` + in-graph `advance` give for update k, so a
schedule produces the same learning rate for every update under both
(tests/schedules/test_keras_fit.py). At the end of epoch i it reads i + 1, as after the loop's
last `advance`. Steps per epoch come from `self.params["steps"]` (known when the dataset has a
known cardinality or `steps_per_epoch` is passed to fit). `samples_seen` is advanced only when
the callback knows the batch size (`batch_size=...`, which `fit_with_batch_schedule` sets per
phase): Keras 3 callbacks are not told it. Known limit: with `compile(steps_per_execution=k)`,
Keras calls batch hooks once per k steps, so the epoch (and the LR) only moves every k updates.

**`fit_with_batch_schedule`** runs a batch-size schedule with plain Keras, one `model.fit` per
phase:

    schedule = AdaBatch(128, interval_epochs=20, growth_factor=2, lr_decay=0.75)
    lr = BatchScheduleMultiplier(StepDecay(0.01, every_epochs=20, factor=1.0), schedule)
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss=..., metrics=[...])

    def make_dataset(batch_size):
        return source.shuffle(60_000).batch(batch_size, drop_remainder=True).prefetch(2)

    history = fit_with_batch_schedule(model, make_dataset, schedule, epochs=100,
                                      validation_data=test_ds)

For each phase [start, end) of `schedule.phases(epochs)` the dataset is rebuilt with the phase's
global batch size and `model.fit(initial_epoch=start, epochs=end)` runs, so epoch numbers (and
therefore `ProgressCallback` and every epoch-keyed schedule) carry on across phases. A
`ProgressCallback` is added unless one is among `callbacks`. Returns one
`keras.callbacks.History` with the phases' per-epoch logs concatenated.

Keras may retrace its train function once when the batch dimension first changes (it traces
with `reduce_retracing`, which then generalises to a `None` batch); the framework loop in
`keras_largebatch.training` avoids that retrace. Use `drop_remainder=True`: ghost batch norm
needs full batches.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import batch as batch_lib
from keras_largebatch.schedules.progress import Progress, default_progress


class ProgressCallback(keras.callbacks.Callback):
    """Sets `progress` to epoch + batch / steps_per_epoch before every training batch."""

    def __init__(self, progress: Progress | None = None, batch_size: int | None = None):
        super().__init__()
        if progress is not None and not isinstance(progress, Progress):
            raise UserInputError(
                f"progress={progress!r} is not a keras_largebatch Progress; pass one or None"
            )
        self._progress = progress
        self.batch_size = batch_size
        self._epoch = 0
        self._steps = 1

    @property
    def progress(self) -> Progress:
        if self._progress is not None:
            return self._progress
        return default_progress()

    def _steps_per_epoch(self) -> int:
        steps = (self.params or {}).get("steps")
        if not steps:
            raise UserInputError(
                "ProgressCallback needs the steps per epoch but model.fit reports "
                f"steps={steps!r}; "
                "pass steps_per_epoch=... to fit or use a finite dataset of known cardinality"
            )
        return int(steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._steps = self._steps_per_epoch()
        self.progress.begin_epoch(self._epoch, self._steps)

    def on_train_batch_begin(self, batch, logs=None):
        self.progress.set_fraction(self._epoch, int(batch), self._steps)

    def on_train_batch_end(self, batch, logs=None):
        if self.batch_size:
            self.progress.samples_seen.assign_add(int(self.batch_size))

    def on_epoch_end(self, epoch, logs=None):
        self.progress.begin_epoch(self._epoch, self._steps, step_in_epoch=self._steps)


_CARRIED = ("initial_epoch", "x", "y", "batch_size")


def fit_with_batch_schedule(
    model: keras.Model,
    make_dataset: Callable[[int], object],
    batch_schedule,
    epochs: int,
    *,
    callbacks: list | None = None,
    **fit_kwargs,
) -> keras.callbacks.History:
    """`model.fit` phase by phase of `batch_schedule` over `epochs` epochs.

    `make_dataset(batch_size)` returns what `fit` takes as `x` (a batched `tf.data.Dataset`
    yielding (x, y) or (x, y, sample_weight)). Other keyword arguments (`validation_data`,
    `verbose`, `steps_per_epoch`, ...) go to every `fit` call; `shuffle` defaults to False
    for `tf.data` datasets (shuffle in `make_dataset`).
    """
    for name in _CARRIED:
        if name in fit_kwargs:
            raise UserInputError(
                f"fit_with_batch_schedule sets {name} itself; remove {name}="
                f"{fit_kwargs[name]!r} from the keyword arguments"
            )
    schedule = batch_lib.get(batch_schedule)
    phases = schedule.phases(epochs)
    callbacks = list(callbacks or [])
    progress_cbs = [c for c in callbacks if isinstance(c, ProgressCallback)]
    if not progress_cbs:
        progress_cbs = [ProgressCallback()]
        callbacks.insert(0, progress_cbs[0])

    merged = keras.callbacks.History()
    merged.history = {}
    merged.epoch = []
    for phase in phases:
        for cb in progress_cbs:
            cb.batch_size = phase.batch_size
        dataset = make_dataset(phase.batch_size)
        kwargs = dict(fit_kwargs)
        if isinstance(dataset, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # a dataset shuffles itself; Keras would warn
        history = model.fit(
            dataset,
            initial_epoch=phase.start_epoch,
            epochs=phase.end_epoch,
            callbacks=callbacks,
            **kwargs,
        )
        merged.epoch.extend(history.epoch)
        for key, values in history.history.items():
            merged.history.setdefault(key, []).extend(values)
    merged.set_model(model)
    return merged
