"""`ProgressCallback`: drives a `Progress` from `model.fit`, the Keras half of the schedule pair.

    progress = Progress()                   # or leave it out: default_progress()
    lr = LinearWarmup(PolynomialDecay(2.0, 0.0, 100), warmup_epochs=5, progress=progress)
    model.compile(optimizer=keras.optimizers.SGD(lr), ...)
    model.fit(dataset, epochs=100, callbacks=[ProgressCallback(progress)])

Before train batch k of epoch i the Progress reads i + k / steps_per_epoch, exactly what the
framework loop's `begin_epoch` + in-graph `advance` give for update k, so a schedule produces
the same learning rate for every update under both (tests/schedules/test_callback.py). At the
end of epoch i it reads i + 1, as after the loop's last `advance`.

Steps per epoch come from `self.params["steps"]` (known when the dataset has a known
cardinality or `steps_per_epoch` is passed to fit). `samples_seen` is advanced only when the
callback knows the batch size (`batch_size=...`, which `fit_with_batch_schedule` sets per
phase): Keras 3 callbacks are not told it.

Known limit: with `compile(steps_per_execution=k)`, Keras calls batch hooks once per k steps,
so the epoch (and the LR) only moves every k updates.
"""

from __future__ import annotations

import keras

from keras_largebatch.errors import UserInputError
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
