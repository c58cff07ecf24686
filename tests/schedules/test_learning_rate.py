"""Epoch-keyed learning-rate schedules: the papers' settings against hand-computed values."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import (
    AdaBatch,
    BatchScaled,
    BatchScheduleMultiplier,
    Constant,
    LinearWarmup,
    PiecewiseBatch,
    PolynomialDecay,
    StepDecay,
    scale_learning_rate,
)
from keras_largebatch.schedules.progress import Progress, default_progress, set_default_progress


@pytest.fixture
def fresh_default_progress():
    """Install a fresh process-wide Progress for the test and restore the old one after."""
    old = default_progress()
    progress = Progress()
    set_default_progress(progress)
    yield progress
    set_default_progress(old)


def seed001_schedule(eta=0.1, total=82):
    # Seed 001 3.1 + 3.4: /10 at 50% and 75%; warmup eta/32 -> eta over the first 5%.
    return LinearWarmup(
        StepDecay(eta, boundary_fractions=[0.5, 0.75], total_epochs=total),
        warmup_fraction=0.05,
        start_factor=1 / 32,
    )


def test_seed001_warmup_and_step_decay():
    s = seed001_schedule()
    w = 0.05 * 82  # 4.1 epochs
    assert s.warmup_epochs == pytest.approx(w)
    assert s.value(0.0) == pytest.approx(0.1 / 32)
    assert s.value(w / 2) == pytest.approx(0.1 / 32 + (0.1 - 0.1 / 32) / 2)
    assert s.value(w) == pytest.approx(0.1)
    assert s.value(40.99) == pytest.approx(0.1)
    assert s.value(41.0) == pytest.approx(0.01)
    assert s.value(61.49) == pytest.approx(0.01)
    assert s.value(61.5) == pytest.approx(0.001)
    assert s.value(81.9) == pytest.approx(0.001)


def test_seed004_warmup_from_absolute_value_into_poly2():
    # Seed 004 footnote 2: LR starts at 0.001, linear to the target over 2.5 epochs; then
    # Algorithm 1's gamma_0 (1 - t/T)^2 over T = 100 epochs.
    s = LinearWarmup(PolynomialDecay(0.02, 0.0, 100), warmup_epochs=2.5, start_value=0.001)
    poly = lambda e: 0.02 * (1 - e / 100) ** 2  # noqa: E731
    assert s.value(0.0) == pytest.approx(0.001)
    assert s.value(1.25) == pytest.approx(0.001 + (poly(1.25) - 0.001) * 0.5)
    assert s.value(2.5) == pytest.approx(poly(2.5))
    assert s.value(50.0) == pytest.approx(0.005)
    assert s.value(100.0) == pytest.approx(0.0)
    assert s.value(130.0) == pytest.approx(0.0)


def test_seed000_gradual_scaling_over_five_epochs():
    # Seed 000 4.2: base LR 0.1 at batch 128, start at 1024 (linear scaling -> 0.8), gradual
    # scaling over 5 epochs, then AdaBatch (batch x2, LR x0.5 every 20 epochs).
    peak = scale_learning_rate(0.1, 1024, 128)
    assert peak == pytest.approx(0.8)
    ada = AdaBatch(1024, 20, growth_factor=2, lr_decay=0.5)
    s = BatchScheduleMultiplier(LinearWarmup(peak, 5, start_factor=128 / 1024), ada)
    assert s.value(0.0) == pytest.approx(0.1)
    assert s.value(2.5) == pytest.approx(0.45)
    assert s.value(5.0) == pytest.approx(0.8)
    assert s.value(19.9) == pytest.approx(0.8)
    assert s.value(20.0) == pytest.approx(0.4)
    assert s.value(85.0) == pytest.approx(0.8 * 0.5**4)


def test_polynomial_decay_with_end_and_start_epoch():
    s = PolynomialDecay(1.0, 0.1, total_epochs=10, power=1.0, start_epoch=2.0)
    assert s.value(0.0) == pytest.approx(1.0)
    assert s.value(2.0) == pytest.approx(1.0)
    assert s.value(6.0) == pytest.approx(0.55)
    assert s.value(10.0) == pytest.approx(0.1)
    assert s.value(12.0) == pytest.approx(0.1)


def test_step_decay_forms():
    assert StepDecay(1.0, [10, 20], factor=0.5).value(9.99) == pytest.approx(1.0)
    assert StepDecay(1.0, [10, 20], factor=0.5).value(10.0) == pytest.approx(0.5)
    assert StepDecay(1.0, [10, 20], factor=0.5).value(25.0) == pytest.approx(0.25)
    every = StepDecay(0.01, every_epochs=20, factor=0.375)  # seed 000 4.1 fixed-batch baseline
    assert [every.value(e) for e in (0, 19.5, 20, 45, 99)] == pytest.approx(
        [0.01, 0.01, 0.00375, 0.01 * 0.375**2, 0.01 * 0.375**4]
    )
    assert Constant(0.3).value(1e6) == pytest.approx(0.3)


def test_sum_of_gradients_view_follows_the_current_batch():
    # Seed 001 Eq. 6: base LR eta~ = eta / m; the optimizer (mean gradient) uses eta~ * m.
    batch = PiecewiseBatch([2], [16, 64])
    s = BatchScaled(2.0**-8, batch)
    assert s.value(1.5) == pytest.approx(16 * 2.0**-8)
    assert s.value(2.0) == pytest.approx(64 * 2.0**-8)
    sqrt = BatchScaled(0.1, batch, reference_batch_size=16, rule="sqrt")
    assert sqrt.value(3.0) == pytest.approx(0.2)
    assert BatchScaled(0.1, batch, 16, rule="none").value(3.0) == pytest.approx(0.1)


def test_scale_learning_rate_rules():
    assert scale_learning_rate(0.1, 8192, 256) == pytest.approx(3.2)
    assert scale_learning_rate(0.1, 8192, 256, rule="sqrt") == pytest.approx(0.1 * math.sqrt(32))
    assert scale_learning_rate(0.1, 8192, 256, rule="none") == pytest.approx(0.1)
    assert scale_learning_rate(2.0**-8, 64, 1) == pytest.approx(0.25)


def test_keras_call_reads_progress_not_step_and_traces_once():
    progress = Progress()
    s = LinearWarmup(StepDecay(0.1, [3], factor=0.5), warmup_epochs=2, progress=progress)
    fn = tf.function(lambda step: s(step))
    progress.begin_epoch(1, steps_per_epoch=4, step_in_epoch=2)  # epoch 1.5
    assert float(fn(tf.constant(999, tf.int64))) == pytest.approx(0.1 * 1.5 / 2)
    progress.begin_epoch(3, steps_per_epoch=4)
    assert float(fn(tf.constant(0, tf.int64))) == pytest.approx(0.05)
    assert fn(tf.constant(0, tf.int64)).dtype == tf.float32
    assert fn.experimental_get_tracing_count() == 1


def test_optimizer_under_mirrored_strategy_uses_progress(two_cpu_strategy):
    # SGD on w with loss mean(w * x), x = 1: each replica's gradient is 1/replicas after the
    # global-batch division, the all-reduced gradient is 1, so w moves by exactly -lr.
    strategy = two_cpu_strategy
    with strategy.scope():
        progress = Progress()
        w = keras.Variable(np.zeros([1]), dtype="float64")
        ada = AdaBatch(4, 1, growth_factor=2, lr_decay=0.5)
        s = BatchScheduleMultiplier(LinearWarmup(0.4, 1.0, start_factor=0.5), ada, progress)
        optimizer = keras.optimizers.SGD(learning_rate=s)
        optimizer.build([w])

    def replica_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w) / strategy.num_replicas_in_sync
        optimizer.apply_gradients([(tape.gradient(loss, w.value), w)])

    @tf.function
    def step():
        strategy.run(replica_step)
        progress.advance(8)

    lrs = []
    for epoch in range(2):
        progress.begin_epoch(epoch, steps_per_epoch=2)
        for _ in range(2):
            before = float(w.numpy()[0])
            step()
            lrs.append(before - float(w.numpy()[0]))
    # epoch 0: warmup 0.4 * (0.5 + 0.5 * e) at e = 0, 0.5; epoch 1+: 0.4 * 0.5 (AdaBatch).
    assert lrs == pytest.approx([0.2, 0.3, 0.2, 0.2], rel=1e-6)
    assert int(progress.samples_seen.numpy()) == 32


def nested():
    ada = AdaBatch(128, 20, growth_factor=2, lr_decay=0.75, max_batch_size=1024)
    inner = LinearWarmup(
        PolynomialDecay(0.4, 0.0, 100, power=2.0), warmup_fraction=0.05, start_value=0.01
    )
    return BatchScaled(BatchScheduleMultiplier(inner, ada), ada, reference_batch_size=128)


def nested_reference(e):
    """Independent formula for `nested()`: poly(2) with a 5-epoch warmup from 0.01, times
    AdaBatch's LR multiplier (capped at 1024 after 3 doublings), times linear scaling."""
    poly = 0.4 * (1 - min(e, 100) / 100) ** 2
    lr = 0.01 + (poly - 0.01) * min(e / 5.0, 1.0)
    k = int(e // 20)
    batch = min(128 * 2**k, 1024)
    multiplier = 0.75 ** min(k, 3) * 0.375 ** max(k - 3, 0)
    return lr * multiplier * batch / 128


def test_nested_schedule_against_independent_formula():
    s = nested()
    for e in [0.0, 1.3, 5.0, 19.99, 20.0, 47.5, 61.0, 85.25, 99.9]:
        assert s.value(e) == pytest.approx(nested_reference(e), rel=1e-9)


def test_nested_serialization_round_trip_json(fresh_default_progress):
    payload = json.dumps(keras.saving.serialize_keras_object(nested()))
    restored = keras.saving.deserialize_keras_object(json.loads(payload))
    assert type(restored) is BatchScaled
    for e in [0.0, 2.5, 21.0, 66.0, 90.0]:
        assert restored.value(e) == pytest.approx(nested_reference(e), rel=1e-9)
    # Deserialised schedules have no Progress of their own: they read the default one.
    fresh_default_progress.begin_epoch(47, steps_per_epoch=2, step_in_epoch=1)
    assert float(restored(0)) == pytest.approx(nested_reference(47.5), rel=1e-6)


def test_optimizer_config_round_trip_keeps_nested_schedule():
    optimizer = keras.optimizers.SGD(learning_rate=nested(), momentum=0.9)
    clone = keras.optimizers.SGD.from_config(optimizer.get_config())
    restored = clone._learning_rate
    assert isinstance(restored, BatchScaled)
    assert restored.value(66.0) == pytest.approx(nested_reference(66.0), rel=1e-9)
    assert restored.get_config() == nested().get_config()


def test_saved_model_file_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(seed001_schedule()), loss="mse")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    schedule = loaded.optimizer._learning_rate
    assert isinstance(schedule, LinearWarmup)
    assert schedule.value(61.5) == pytest.approx(0.001)


def test_progress_set_after_construction_is_followed(fresh_default_progress):
    s = StepDecay(1.0, [1], factor=0.5)  # built before the loop installs its Progress
    loop_progress = Progress()
    set_default_progress(loop_progress)
    loop_progress.begin_epoch(2, steps_per_epoch=1)
    assert float(s(0)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "build, needle",
    [
        (lambda: LinearWarmup(PolynomialDecay(0.1, 0, 10), 11), "warmup_epochs=11.0"),
        (lambda: LinearWarmup(0.1, 20, total_epochs=10), "warmup_epochs=20.0"),
        (lambda: LinearWarmup(0.1, -1), "warmup_epochs=-1"),
        (lambda: LinearWarmup(0.1, warmup_fraction=0.05), "warmup_fraction=0.05"),
        (lambda: LinearWarmup(0.1, warmup_fraction=1.5, total_epochs=10), "warmup_fraction=1.5"),
        (lambda: LinearWarmup(0.1, 5, warmup_fraction=0.1), "warmup_epochs=5"),
        (lambda: LinearWarmup(0.1, 1, start_factor=-0.5), "start_factor=-0.5"),
        (lambda: LinearWarmup(0.1, 1, 0.5, start_value=0.1), "start_factor=0.5"),
        (
            lambda: LinearWarmup(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9), 1),
            "after=",
        ),
        (lambda: LinearWarmup("fast", 1), "after='fast'"),
        (lambda: StepDecay(0.1, [50, 25]), "boundaries_epochs=[50.0, 25.0]"),
        (lambda: StepDecay(0.1, [10, 10]), "boundaries_epochs=[10.0, 10.0]"),
        (lambda: StepDecay(0.1, [-5]), "boundaries_epochs=-5"),
        (lambda: StepDecay(0.1, [5, 50], total_epochs=20), "boundaries_epochs=[5.0, 50.0]"),
        (lambda: StepDecay(0.1, boundary_fractions=[0.75, 0.5], total_epochs=8), "[0.75, 0.5]"),
        (lambda: StepDecay(0.1, boundary_fractions=[0.5, 1.5], total_epochs=8), "1.5"),
        (lambda: StepDecay(0.1, boundary_fractions=[0.5]), "boundary_fractions=[0.5]"),
        (lambda: StepDecay(0.1), "none"),
        (lambda: StepDecay(0.1, [1], every_epochs=2), "every_epochs"),
        (lambda: StepDecay(0.1, [1], factor=0), "factor=0"),
        (lambda: PolynomialDecay(0.1, 0.0, -10), "total_epochs=-10"),
        (lambda: PolynomialDecay(0.1, 0.0, 10, start_epoch=10), "start_epoch=10"),
        (lambda: PolynomialDecay(-0.1, 0.0, 10), "initial=-0.1"),
        (lambda: Constant(float("nan")), "value=nan"),
        (lambda: LinearWarmup(-0.1, warmup_epochs=1), "after=-0.1"),  # not "value=-0.1"
        (lambda: BatchScaled(-0.5, AdaBatch(8, 1)), "schedule=-0.5"),
        (lambda: Constant(0.1).value(-2.0), "epoch=-2.0"),
        (lambda: BatchScaled(0.1, AdaBatch(8, 1), rule="cubic"), "rule='cubic'"),
        (
            lambda: BatchScaled(0.1, AdaBatch(8, 1), reference_batch_size=0),
            "reference_batch_size=0",
        ),
        (lambda: BatchScheduleMultiplier(0.1, "big"), "batch_schedule='big'"),
        (lambda: scale_learning_rate(0.1, 0, 256), "batch_size=0"),
        (lambda: scale_learning_rate(0.1, 512, 25.5), "reference_batch_size=25.5"),
        (lambda: scale_learning_rate(-1.0, 512, 256), "base_lr=-1.0"),
        (lambda: scale_learning_rate(0.1, 512, 256, rule="log"), "rule='log'"),
        (lambda: Constant(0.1, progress="epoch"), "progress='epoch'"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(build, needle):
    with pytest.raises(UserInputError) as info:
        build()
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
