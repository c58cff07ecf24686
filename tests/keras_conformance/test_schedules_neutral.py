"""Keras' schedule checks (learning_rate_schedule_test.py) for our epoch-keyed schedules.

Backend-neutral: run here and, from test_backends.py, under JAX (whose `fit` jits the step)
and PyTorch. The reference for "the LR moves inside the compiled step" is a model whose
gradient is exactly 1 per update, so plain SGD leaves w = -sum_t lr_t: the sum of the
schedule's values at every update's fractional epoch.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_largebatch  # noqa: F401  (registers every schedule)
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import (
    AdaBatch,
    BatchScaled,
    BatchScheduleMultiplier,
    Constant,
    LinearWarmup,
    PiecewiseBatch,
    PolynomialDecay,
    Progress,
    ProgressCallback,
    StepDecay,
    fit_with_batch_schedule,
)

SCHEDULES = [
    Constant(0.1),
    PolynomialDecay(1.0, 0.01, 10, power=2.0, start_epoch=1.0),
    StepDecay(0.1, [2, 4.5], factor=0.5),
    StepDecay(0.1, every_epochs=3),
    LinearWarmup(PolynomialDecay(2.0, 0.0, 20), warmup_epochs=2, start_value=0.001),
    BatchScheduleMultiplier(LinearWarmup(0.1, warmup_fraction=0.1, total_epochs=10),
                            AdaBatch(32, 2, lr_decay=0.75, max_batch_size=64)),
    BatchScaled(0.01, PiecewiseBatch([2], [16, 64]), reference_batch_size=16, rule="sqrt"),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_serialize_deserialize_round_trip(schedule):
    # learning_rate_schedule_test: serialize / deserialize gives the same config and values.
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule))
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    for epoch in (0.0, 0.5, 1.75, 3.0, 9.5):
        assert restored.value(epoch) == pytest.approx(schedule.value(epoch), rel=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES[:3], ids=lambda s: type(s).__name__)
def test_optimizer_config_round_trip(schedule):
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    restored = keras.optimizers.SGD.from_config(optimizer.get_config())
    assert type(restored._learning_rate) is type(schedule)


def unit_gradient_model(lr):
    """y = x . w with x = 1 and loss = mean(y): every update's gradient is exactly 1."""
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=lambda y, p: ops.mean(p))
    return model


def test_lr_changes_every_update_inside_the_compiled_fit_step():
    progress = Progress()
    lr = LinearWarmup(StepDecay(0.1, [2], factor=0.5), warmup_epochs=1.5, start_factor=0.25,
                      progress=progress)
    model = unit_gradient_model(lr)
    x = np.ones((16, 1), "float32")
    model.fit(x, x, batch_size=4, epochs=3, shuffle=False, verbose=0,
              callbacks=[ProgressCallback(progress)])
    expected = sum(lr.value(e + k / 4) for e in range(3) for k in range(4))
    np.testing.assert_allclose(ops.convert_to_numpy(model.weights[0]), [[-expected]], rtol=1e-5)
    assert int(ops.convert_to_numpy(model.optimizer.iterations)) == 12
    assert float(ops.convert_to_numpy(progress.epoch)) == pytest.approx(3.0)
    # The clock's variables joined the optimizer only during fit (JAX); saving is unchanged.
    assert not any(v is progress.epoch for v in model.optimizer.variables)


def test_fit_with_batch_schedule_changes_lr_and_batch():
    progress = Progress()
    batches = AdaBatch(4, interval_epochs=1, growth_factor=2, lr_decay=0.5)
    lr = BatchScheduleMultiplier(Constant(0.1), batches, progress=progress)
    model = unit_gradient_model(lr)
    x = np.ones((16, 1), "float32")
    fit_with_batch_schedule(model, lambda b: (x, x), batches, epochs=3, verbose=0,
                            shuffle=False, callbacks=[ProgressCallback(progress)])
    # epoch e: batch 4 * 2^e (4, 2, 1 updates), LR 0.1 * 0.5^e
    expected = 4 * 0.1 + 2 * 0.05 + 1 * 0.025
    np.testing.assert_allclose(ops.convert_to_numpy(model.weights[0]), [[-expected]], rtol=1e-5)


def test_undriven_schedule_fails_loudly():
    # Issue 3: no ProgressCallback, no framework loop -> an error, not LR 0 forever.
    lr = LinearWarmup(0.1, warmup_epochs=2, progress=Progress())
    model = unit_gradient_model(lr)
    x = np.ones((8, 1), "float32")
    with pytest.raises(UserInputError, match="nothing drives its Progress"):
        model.fit(x, x, batch_size=4, epochs=1, verbose=0)


def test_step_based_fallback_follow_iterations():
    progress = Progress()
    progress.follow_iterations(steps_per_epoch=2)  # epoch = iterations / 2
    lr = LinearWarmup(0.1, warmup_epochs=2, progress=progress)
    model = unit_gradient_model(lr)
    x = np.ones((8, 1), "float32")
    model.fit(x, x, batch_size=4, epochs=2, shuffle=False, verbose=0)  # 4 updates
    expected = sum(lr.value(t / 2) for t in range(4))
    np.testing.assert_allclose(ops.convert_to_numpy(model.weights[0]), [[-expected]], rtol=1e-5)
