"""The schedule/callback pair: identical LR per update in the framework loop and in model.fit.

The learning rate actually used by each update is measured, not asked for: a float64 weight w
with loss mean(w * x), x = 1, has gradient exactly 1, so plain SGD moves w by -lr per update.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import (
    AdaBatch,
    BatchScheduleMultiplier,
    Constant,
    LinearWarmup,
    ProgressCallback,
    StepDecay,
    fit_with_batch_schedule,
)
from keras_largebatch.schedules.progress import Progress

N = 16  # samples


def probe_model(schedule):
    model = keras.Sequential(
        [
            keras.Input((1,), dtype="float64"),
            keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", dtype="float64"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=schedule),
        loss=lambda y_true, y_pred: y_pred[:, 0],
    )
    return model


def make_dataset(batch_size):
    x = np.ones([N, 1])
    return tf.data.Dataset.from_tensor_slices((x, np.zeros([N, 1]))).batch(
        batch_size, drop_remainder=True
    )


class RecordUpdates(keras.callbacks.Callback):
    """The learning rate each update used, from the weight change."""

    def __init__(self):
        super().__init__()
        self.lrs = []

    def on_train_batch_begin(self, batch, logs=None):
        self._before = float(self.model.layers[0].kernel.numpy()[0, 0])

    def on_train_batch_end(self, batch, logs=None):
        self.lrs.append(self._before - float(self.model.layers[0].kernel.numpy()[0, 0]))


def run_framework_loop(schedule_fn, epochs, batch_size_fn):
    """What the framework loop does: begin_epoch on the host, advance after each update."""
    progress = Progress()
    model = probe_model(schedule_fn(progress))
    kernel = model.layers[0].kernel

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float64)])
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        progress.advance(tf.shape(x)[0])

    lrs = []
    for epoch in range(epochs):
        batch = batch_size_fn(epoch)
        steps = N // batch
        progress.begin_epoch(epoch, steps_per_epoch=steps)
        for x, _ in make_dataset(batch):
            before = float(kernel.numpy()[0, 0])
            train_step(x)
            lrs.append(before - float(kernel.numpy()[0, 0]))
    assert train_step.experimental_get_tracing_count() == 1
    return lrs, progress


def warmup_then_step(progress=None):
    return LinearWarmup(
        StepDecay(0.1, [3], factor=0.5), warmup_epochs=1.5, start_factor=0.25, progress=progress
    )


def expected_warmup_then_step(epochs, steps):
    """Hand formula, update k of epoch i at e = i + k / steps."""
    out = []
    for i in range(epochs):
        for k in range(steps):
            e = i + k / steps
            if e < 1.5:
                out.append(0.1 * (0.25 + 0.75 * e / 1.5))
            else:
                out.append(0.1 if e < 3 else 0.05)
    return out


def test_identical_lr_sequences_loop_and_fit():
    epochs, batch = 4, 4
    loop_lrs, loop_progress = run_framework_loop(warmup_then_step, epochs, lambda e: batch)

    progress = Progress()
    model = probe_model(warmup_then_step(progress))
    record = RecordUpdates()
    model.fit(
        make_dataset(batch),
        epochs=epochs,
        callbacks=[ProgressCallback(progress, batch_size=batch), record],
        shuffle=False,
        verbose=0,
    )
    expected = expected_warmup_then_step(epochs, N // batch)
    assert loop_lrs == pytest.approx(expected, rel=1e-6)
    assert record.lrs == pytest.approx(expected, rel=1e-6)
    assert record.lrs == loop_lrs  # bit-identical: same float32 schedule values
    # Both leave the Progress at the end of the last epoch with the same samples count.
    assert float(progress.epoch.numpy()) == float(loop_progress.epoch.numpy()) == epochs
    assert int(progress.samples_seen.numpy()) == int(loop_progress.samples_seen.numpy()) == 64


def adabatch_lr(progress=None):
    ada = AdaBatch(4, interval_epochs=2, growth_factor=2, lr_decay=0.5)
    warm = LinearWarmup(Constant(0.1), warmup_epochs=2.0, start_factor=0.0)
    return BatchScheduleMultiplier(warm, ada, progress=progress), ada


def test_fit_with_batch_schedule_phases_match_framework_loop():
    progress = Progress()
    lr, ada = adabatch_lr(progress)
    model = probe_model(lr)
    record = RecordUpdates()
    history = fit_with_batch_schedule(
        model,
        make_dataset,
        ada,
        epochs=4,
        callbacks=[ProgressCallback(progress), record],
        verbose=0,
    )
    # Epochs 0-1: batch 4 (4 updates/epoch), warmup 0.1 * e / 2 per update.
    # Epochs 2-3: batch 8 (2 updates/epoch), 0.1 * 0.5.
    expected = [0.1 * (k / 4) / 2 for k in range(4)]
    expected += [0.1 * (1 + k / 4) / 2 for k in range(4)]
    expected += [0.05] * 4
    assert record.lrs == pytest.approx(expected, rel=1e-6)
    assert history.epoch == [0, 1, 2, 3]
    assert len(history.history["loss"]) == 4
    assert int(progress.samples_seen.numpy()) == 4 * N

    loop_lrs, _ = run_framework_loop(
        lambda p: adabatch_lr(p)[0], 4, lambda epoch: ada.batch_size(epoch)
    )
    assert loop_lrs == record.lrs


def test_fit_with_batch_schedule_adds_its_own_progress_callback(monkeypatch):
    from keras_largebatch.schedules import progress as progress_lib

    fresh = Progress()
    monkeypatch.setattr(progress_lib, "_default_progress", fresh)
    lr, ada = adabatch_lr()  # no explicit Progress: both sides use the default one
    model = probe_model(lr)
    record = RecordUpdates()
    fit_with_batch_schedule(model, make_dataset, ada, epochs=3, callbacks=[record], verbose=0)
    assert record.lrs[-2:] == pytest.approx([0.05, 0.05], rel=1e-6)
    assert float(fresh.epoch.numpy()) == 3.0


def test_callback_without_steps_is_a_clear_error():
    callback = ProgressCallback(Progress())
    callback.set_params({"epochs": 1, "steps": None, "verbose": 0})
    with pytest.raises(UserInputError, match="steps=None") as info:
        callback.on_epoch_begin(0)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwarg", ["initial_epoch", "batch_size"])
def test_fit_with_batch_schedule_rejects_carried_arguments(kwarg):
    lr, ada = adabatch_lr(Progress())
    with pytest.raises(UserInputError, match=kwarg):
        fit_with_batch_schedule(probe_model(lr), make_dataset, ada, 2, **{kwarg: 3})
