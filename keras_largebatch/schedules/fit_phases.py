"""Run a batch-size schedule with plain Keras: one `model.fit` per phase.

    schedule = AdaBatch(128, interval_epochs=20, growth_factor=2, lr_decay=0.75)
    lr = BatchScheduleMultiplier(StepDecay(0.01, every_epochs=20, factor=1.0), schedule)
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss=..., metrics=[...])

    def make_dataset(batch_size):
        return source.shuffle(60_000).batch(batch_size, drop_remainder=True).prefetch(2)

    history = fit_with_batch_schedule(model, make_dataset, schedule, epochs=100,
                                      validation_data=test_ds)

For each phase the dataset is rebuilt with the phase's global batch size and `model.fit` runs
epochs [start, end) with `initial_epoch=start`, so epoch numbers (and therefore
`ProgressCallback` and every epoch-keyed schedule) carry on across phases. A `ProgressCallback`
is added unless one is among `callbacks`. Returns one `keras.callbacks.History` with the
phases' per-epoch logs concatenated.

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
from keras_largebatch.schedules.callback import ProgressCallback

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
