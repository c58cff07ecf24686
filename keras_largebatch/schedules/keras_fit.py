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
(tests/schedules/test_keras_fit.py). The callback links the clock to the optimizer's iteration
count at each epoch start, and the schedule computes i + (t - t0) / steps_per_epoch from the
iteration t that Keras passes to it inside the train step (progress.py): this works under a
jitted JAX step, with `steps_per_execution=k` (batch hooks every k steps), and on every backend.
At the end of epoch i the Progress reads i + 1, as after the loop's last `advance`. Steps per
epoch come from `self.params["steps"]` (known when the dataset has a known cardinality or
`steps_per_epoch` is passed to fit). `samples_seen` is advanced only when the callback knows
the batch size (`batch_size=...`, which `fit_with_batch_schedule` sets per phase): Keras 3
callbacks are not told it.

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
`keras_largebatch.training` avoids that retrace. A remainder batch (no `drop_remainder`) is
fine for every part, ghost batch norm included, but it makes the last update of an epoch
noisier; the framework loop drops it.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import batch as batch_lib
from keras_largebatch.schedules.progress import Progress, default_progress


class ProgressCallback(keras.callbacks.Callback):
    """Drives `progress` from `model.fit`, linked to the optimizer's iteration count.

    At the start of epoch i it calls `progress.begin_epoch(i, steps, iteration=t0)` with t0 the
    optimizer's iterations, so the schedule reads i + (t - t0) / steps for update t in-graph
    (progress.py). On JAX the clock's variables join the optimizer's variables from
    `on_train_begin` to `on_train_end` (a jitted step sees only its state; Keras re-reads the
    state after `on_epoch_begin`), and are removed again so that saving stays unchanged.
    """

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
        self._attached = []

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

    def _optimizer(self):
        return getattr(self.model, "optimizer", None) if self.model is not None else None

    def _iterations(self) -> int | None:
        optimizer = self._optimizer()
        if optimizer is None:
            return None
        # The raw count Keras passes to schedules (`iterations` divides it by the
        # gradient accumulation steps); it counts batches, as steps_per_epoch does.
        return int(ops.convert_to_numpy(optimizer._iterations))

    def on_train_begin(self, logs=None):
        optimizer = self._optimizer()
        if keras.backend.backend() != "jax" or optimizer is None:
            return
        tracked = {id(v) for v in optimizer.variables}
        for variable in self.progress.clock_variables:
            if id(variable) not in tracked:
                optimizer._track_variable(variable)
                self._attached.append(variable)

    def on_train_end(self, logs=None):
        optimizer = self._optimizer()
        if self._attached and optimizer is not None:
            attached = {id(v) for v in self._attached}
            optimizer._variables = [v for v in optimizer._variables if id(v) not in attached]
        self._attached = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._steps = self._steps_per_epoch()
        self.progress.begin_epoch(self._epoch, self._steps, iteration=self._iterations())

    def on_train_batch_begin(self, batch, logs=None):
        if keras.backend.backend() != "jax":  # on JAX the state holds the clock (on_train_begin)
            self.progress.set_fraction(self._epoch, int(batch), self._steps)

    def on_train_batch_end(self, batch, logs=None):
        if self.batch_size and keras.backend.backend() != "jax":
            self.progress.samples_seen.assign_add(int(self.batch_size))

    def on_epoch_end(self, epoch, logs=None):
        if self.batch_size and keras.backend.backend() == "jax":
            self.progress.samples_seen.assign_add(int(self.batch_size) * self._steps)
        self.progress.set_fraction(self._epoch, self._steps, self._steps)


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

    `make_dataset(batch_size)` returns a batched dataset (`tf.data.Dataset`, `PyDataset`, ...
    yielding (x, y) or (x, y, sample_weight)) or a tuple of arrays `(x, y)` /
    `(x, y, sample_weight)` that `fit` batches with the phase's `batch_size`. Other keyword
    arguments (`validation_data`, `verbose`, `steps_per_epoch`, ...) go to every `fit` call;
    `shuffle` defaults to False for `tf.data` datasets (shuffle in `make_dataset`).
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
        if isinstance(dataset, tuple):  # arrays: (x, y) or (x, y, sample_weight)
            names = ("y", "sample_weight")[: len(dataset) - 1]
            kwargs.update(zip(names, dataset[1:]), batch_size=phase.batch_size)
            dataset = dataset[0]
        elif _is_tf_dataset(dataset):
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


def _is_tf_dataset(dataset) -> bool:
    """A `tf.data.Dataset`, recognised without importing TensorFlow on other backends."""
    return any(c.__module__.startswith("tensorflow") and c.__name__ == "DatasetV2"
               for c in type(dataset).__mro__)
