"""Batch-size schedules: seed 000 / 002 settings against hand-computed phases and multipliers."""

import json

import keras
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import AdaBatch, FixedBatch, Phase, PiecewiseBatch


def test_adabatch_seed000_section41_phases_and_effective_decay():
    # Seed 000 4.1: 100 epochs, batch 128 doubling and LR x0.75 every 20 epochs.
    schedule = AdaBatch(128, interval_epochs=20, growth_factor=2, lr_decay=0.75)
    assert schedule.phases(100) == [
        Phase(0, 20, 128, 1.0),
        Phase(20, 40, 256, 0.75),
        Phase(40, 60, 512, 0.5625),
        Phase(60, 80, 1024, 0.421875),
        Phase(80, 100, 2048, 0.31640625),
    ]
    # The per-sample step alpha/r falls by 0.75 / 2 = 0.375 per interval: the decay the paper
    # gives its fixed-batch baselines.
    assert schedule.effective_decay == pytest.approx(0.375)
    for k, phase in enumerate(schedule.phases(100)):
        assert phase.lr_multiplier / phase.batch_size * 128 == pytest.approx(0.375**k)


@pytest.mark.parametrize("growth, decay", [(2, 0.2), (4, 0.4), (8, 0.8)])
def test_adabatch_seed000_section43_growth_factors_share_effective_decay(growth, decay):
    # Seed 000 4.3: batch x2/x4/x8 with LR x0.2/0.4/0.8 every 30 epochs matches the fixed
    # baseline's LR x0.1 every 30 epochs in alpha/r.
    schedule = AdaBatch(8192, interval_epochs=30, growth_factor=growth, lr_decay=decay)
    phases = schedule.phases(90)
    assert [p.batch_size for p in phases] == [8192, 8192 * growth, 8192 * growth**2]
    assert [p.lr_multiplier for p in phases] == pytest.approx([1.0, decay, decay**2])
    per_sample = [p.lr_multiplier / p.batch_size * 8192 for p in phases]
    assert per_sample == pytest.approx([1.0, 0.1, 0.01])


def test_adabatch_fractional_epochs_switch_at_whole_boundaries():
    schedule = AdaBatch(128, 20, 2, 0.75)
    assert schedule.batch_size(19.999) == 128
    assert schedule.batch_size(20.0) == 256
    assert schedule.batch_size(41.5) == 512
    assert schedule.lr_multiplier(41.5) == pytest.approx(0.5625)
    assert schedule.batch_size(1000.0) == 128 * 2**50  # no cap: keeps growing


def test_adabatch_cap_keeps_per_sample_step_on_schedule():
    capped = AdaBatch(128, 20, 2, 0.75, max_batch_size=512)
    uncapped = AdaBatch(128, 20, 2, 0.75)
    assert [(p.batch_size, p.lr_multiplier) for p in capped.phases(100)] == [
        (128, 1.0),
        (256, 0.75),
        (512, 0.5625),
        (512, 0.5625 * 0.375),
        (512, 0.5625 * 0.375**2),
    ]
    for epoch in [0, 25, 45, 65, 85, 99.5]:
        assert capped.lr_multiplier(epoch) / capped.batch_size(epoch) == pytest.approx(
            uncapped.lr_multiplier(epoch) / uncapped.batch_size(epoch)
        )


def test_adabatch_partial_cap():
    # Cap 384 lies between 256 and 512: interval 2 runs at 384 with LR 0.75^2 * 384/512.
    schedule = AdaBatch(128, 20, 2, 0.75, max_batch_size=384)
    assert [p.batch_size for p in schedule.phases(80)] == [128, 256, 384, 384]
    assert schedule.lr_multiplier(45) == pytest.approx(0.5625 * 0.75)
    assert schedule.lr_multiplier(65) == pytest.approx(0.5625 * 0.75 * 0.375)


def test_adabatch_defaults_and_growth_one():
    schedule = AdaBatch(64, 10)  # growth 2, lr_decay 1.0: the batch growth alone decays alpha/r
    assert [(p.batch_size, p.lr_multiplier) for p in schedule.phases(30)] == [
        (64, 1.0),
        (128, 1.0),
        (256, 1.0),
    ]
    flat = AdaBatch(64, 10, growth_factor=1, lr_decay=0.5)  # = step decay at a fixed batch
    assert [(p.batch_size, p.lr_multiplier) for p in flat.phases(30)] == [
        (64, 1.0),
        (64, 0.5),
        (64, 0.25),
    ]


def test_piecewise_seed002_manual_schedule():
    # Seed 002 "Manual": 32 doubling every 25 epochs.
    schedule = PiecewiseBatch([25, 50, 75], [32, 64, 128, 256])
    assert schedule.phases(100) == [
        Phase(0, 25, 32, 1.0),
        Phase(25, 50, 64, 1.0),
        Phase(50, 75, 128, 1.0),
        Phase(75, 100, 256, 1.0),
    ]
    assert schedule.batch_size(24.99) == 32
    assert schedule.batch_size(25) == 64
    assert schedule.phases(30) == [Phase(0, 25, 32, 1.0), Phase(25, 30, 64, 1.0)]


def test_piecewise_lr_multipliers_and_merging():
    schedule = PiecewiseBatch([2, 4], [8, 8, 16], lr_multipliers=[1.0, 1.0, 0.5])
    assert schedule.phases(6) == [Phase(0, 4, 8, 1.0), Phase(4, 6, 16, 0.5)]


def test_fixed_batch():
    schedule = FixedBatch(256)
    assert schedule.phases(90) == [Phase(0, 90, 256, 1.0)]
    assert schedule.batch_size(89.5) == 256 and schedule.lr_multiplier(3) == 1.0
    assert FixedBatch(256.0).batch_size(0) == 256  # whole floats (gin) are fine


def test_in_graph_lookup_matches_hand_values():
    ada = AdaBatch(128, 20, 2, 0.75, max_batch_size=512)
    piece = PiecewiseBatch([25, 50], [32, 64, 128], lr_multipliers=[1.0, 0.5, 0.25])
    epoch = tf.Variable(0.0, dtype=tf.float64)

    @tf.function
    def lookup():
        return (
            ada.batch_size_at(epoch),
            ada.lr_multiplier_at(epoch),
            piece.batch_size_at(epoch),
            piece.lr_multiplier_at(epoch),
        )

    expected = {
        0.0: (128, 1.0, 32, 1.0),
        19.75: (128, 1.0, 32, 1.0),
        20.0: (256, 0.75, 32, 1.0),
        49.5: (512, 0.5625, 64, 0.5),
        65.25: (512, 0.5625 * 0.375, 128, 0.25),
    }
    for e, values in expected.items():
        epoch.assign(e)
        assert [float(v) for v in lookup()] == pytest.approx(values)
    assert lookup.experimental_get_tracing_count() == 1


@pytest.mark.parametrize(
    "schedule",
    [
        FixedBatch(64),
        PiecewiseBatch([25, 50, 75], [32, 64, 128, 256]),
        PiecewiseBatch([3], [8, 16], lr_multipliers=[1.0, 0.5]),
        AdaBatch(128, 20, growth_factor=4, lr_decay=0.4, max_batch_size=4096),
    ],
)
def test_serialization_round_trip(schedule):
    clone = type(schedule).from_config(schedule.get_config())
    assert clone.phases(100) == schedule.phases(100)
    payload = json.dumps(keras.saving.serialize_keras_object(schedule))
    restored = keras.saving.deserialize_keras_object(json.loads(payload))
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    assert restored.phases(100) == schedule.phases(100)


@pytest.mark.parametrize(
    "build, needle",
    [
        (lambda: FixedBatch(0), "batch_size=0"),
        (lambda: FixedBatch(-32), "batch_size=-32"),
        (lambda: FixedBatch(12.5), "batch_size=12.5"),
        (lambda: FixedBatch("32"), "batch_size='32'"),
        (lambda: FixedBatch(True), "batch_size=True"),
        (lambda: AdaBatch(0, 20), "initial_batch_size=0"),
        (lambda: AdaBatch(128, 20, growth_factor=0.5), "growth_factor=0.5"),
        (lambda: AdaBatch(128, 20, growth_factor=1.5), "growth_factor=1.5"),
        (lambda: AdaBatch(128, 0), "interval_epochs=0"),
        (lambda: AdaBatch(128, -5), "interval_epochs=-5"),
        (lambda: AdaBatch(128, 20, lr_decay=0.0), "lr_decay=0.0"),
        (lambda: AdaBatch(128, 20, max_batch_size=64), "max_batch_size=64"),
        (lambda: PiecewiseBatch([50, 25], [32, 64, 128]), "boundaries_epochs=[50, 25]"),
        (lambda: PiecewiseBatch([25, 25], [32, 64, 128]), "boundaries_epochs=[25, 25]"),
        (lambda: PiecewiseBatch([-1], [32, 64]), "boundaries_epochs=-1"),
        (lambda: PiecewiseBatch([25], [32]), "batch_sizes=[32]"),
        (lambda: PiecewiseBatch([25], [32, 0]), "batch_sizes=0"),
        (lambda: PiecewiseBatch([25], [32, 64], [1.0]), "lr_multipliers=[1.0]"),
        (lambda: FixedBatch(32).batch_size(-1.0), "epoch=-1.0"),
        (lambda: AdaBatch(32, 2).lr_multiplier(-0.5), "epoch=-0.5"),
        (lambda: FixedBatch(32).phases(0), "total_epochs=0"),
        (lambda: FixedBatch(32).phases(-3), "total_epochs=-3"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(build, needle):
    with pytest.raises(UserInputError) as info:
        build()
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
