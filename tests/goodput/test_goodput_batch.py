"""GoodputBatch's decision (Pollux, Qiao et al. OSDI 2021) and AdaScale's gain (Johnson et al.
2020) against hand computation and brute force."""

import math

import keras
import numpy as np
import pytest

from keras_largebatch.errors import UserInputError
from keras_largebatch.goodput.adascale import (
    AdaScaled,
    adascale_gain,
    statistical_efficiency,
)
from keras_largebatch.goodput.batch import GoodputBatch
from keras_largebatch.goodput.noise_scale import SmoothedGradientStats
from keras_largebatch.goodput.throughput import CostModel, Observation, fit_online
from keras_largebatch.schedules import Progress


def _reference_gain(scale, sqr, var):
    """petuum/adaptdl GradientNoiseScale.gain, written out: var = sigma^2 at B0, clamped."""
    var, sqr = max(var, 1e-6), max(sqr, 0.0)
    return (var + sqr) / (var / scale + sqr)


def test_adascale_gain_by_hand():
    # sigma^2 = 64 / 32 = 2, mu^2 = 0.5: r(8) = 2.5 / (0.25 + 0.5)
    assert adascale_gain(8.0, 0.5, 64.0, 32) == pytest.approx(2.5 / 0.75)
    assert adascale_gain(1.0, 0.5, 64.0, 32) == pytest.approx(1.0)
    assert adascale_gain(8.0, 0.0, 64.0, 32) == pytest.approx(8.0)   # pure noise: linear
    assert adascale_gain(8.0, 0.5, 0.0, 32) == pytest.approx(1.0)    # no noise: no gain
    assert adascale_gain(8.0, 0.0, 0.0, 32) == pytest.approx(1.0)    # no statistics yet


def test_adascale_gain_matches_the_reference_rule_on_the_same_statistics():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scale, g2, trace, b0 = rng.uniform(1, 64), rng.uniform(0.01, 10), rng.uniform(1, 1e4), 128
        ours = float(adascale_gain(scale, g2, trace, b0))
        assert ours == pytest.approx(_reference_gain(scale, g2, trace / b0), rel=1e-9)
        assert 1.0 <= ours <= scale * (1 + 1e-12)


def test_efficiency_is_pollux_eq5():
    b_noise, b0 = 300.0, 64
    for batch in (64, 128, 1000, 4096):
        expected = (b_noise + b0) / (b_noise + batch)
        assert statistical_efficiency(batch, 2.0, 2.0 * b_noise, b0) == pytest.approx(expected)


def test_adascaled_schedule_multiplies_by_the_gain_at_the_current_batch():
    progress = Progress()
    schedule = GoodputBatch(64, 1024)
    stats = SmoothedGradientStats(64)
    stats.update(0.5, 64.0 * 2, 64)                 # sigma^2 at B0 = 2
    lr = AdaScaled(0.1, schedule, base_batch_size=64, stats=stats, progress=progress)
    schedule.enter_epoch(0)
    assert float(lr.value(0.0)) == pytest.approx(0.1)
    schedule.load_state({"0": 64, "1": 512})
    schedule.enter_epoch(1)
    assert float(lr.value(1.0)) == pytest.approx(0.1 * 2.5 / (2 / 8 + 0.5), rel=1e-6)
    config = keras.saving.serialize_keras_object(lr)
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, AdaScaled) and again.get_config() == lr.get_config()


def _brute_force(candidates, a, c, workers, b_noise, b0):
    def goodput(b):
        return b / (a + c * b / workers) * (b_noise + b0) / (b_noise + b)
    return max(candidates, key=goodput)


@pytest.mark.parametrize("a,c,b_noise", [(0.01, 1e-5, 500.0), (0.0, 1e-4, 500.0),
                                         (0.5, 1e-6, 5000.0), (1e-3, 1e-4, 20.0)])
def test_decision_is_the_goodput_argmax(a, c, b_noise):
    schedule = GoodputBatch(32, 8192, num_candidates=24)
    candidates = schedule.candidates(granularity=2)
    decision = schedule.decide(1, candidates, CostModel(a=a, c=c, alpha=0, beta=0), workers=2,
                               g2=1.0, trace=b_noise)
    assert decision.batch_size == _brute_force(candidates, a, c, 2, b_noise, 32)
    assert schedule.batch_size(1) == decision.batch_size
    assert schedule.batch_size(7.5) == decision.batch_size   # holds until the next decision
    assert schedule.batch_size(0) == 32
    assert decision.b_noise == pytest.approx(b_noise)


def test_decision_follows_the_closed_form_optimum():
    """B* = sqrt(a W B_noise / c) maximises B / ((a + c B / W)(B_noise + B))."""
    a, c, w, b_noise = 0.02, 2e-5, 4, 900.0
    schedule = GoodputBatch(16, 65536, num_candidates=400)
    decision = schedule.decide(1, schedule.candidates(4), CostModel(a, c, 0, 0), workers=w,
                               g2=1.0, trace=b_noise)
    best = math.sqrt(a * w * b_noise / c)  # 1897.4
    assert decision.batch_size == pytest.approx(best, rel=0.03)


def test_step_time_proportional_to_the_batch_keeps_the_smallest():
    """One CPU process: no fixed cost per update, so a larger batch only costs efficiency."""
    schedule = GoodputBatch(128, 4096)
    decision = schedule.decide(1, schedule.candidates(), CostModel(0.0, 1e-4, 0, 0), workers=1,
                               g2=1.0, trace=1e5)
    assert decision.batch_size == 128


def test_no_statistics_never_grows():
    schedule = GoodputBatch(128, 4096)
    decision = schedule.decide(1, schedule.candidates(), CostModel(1.0, 1e-6, 0, 0), workers=1,
                               g2=None, trace=None)
    assert decision.batch_size == 128 and decision.b_noise is None


def test_candidates_are_a_geometric_grid_of_valid_multiples():
    got = GoodputBatch(100, 2000, num_candidates=8).candidates(granularity=8)
    assert all(b % 8 == 0 and 100 <= b <= 2000 for b in got)
    ratios = np.diff(np.log(got))
    assert np.all(ratios > 0) and ratios.max() < 2 * ratios.min() + 0.1
    assert GoodputBatch(64, 64).candidates() == [64]


def test_state_and_config_round_trip():
    schedule = GoodputBatch(64, 1024, decide_every_epochs=2, step_time_model=(0.01, 1e-5))
    schedule.decide(2, [64, 128, 256], CostModel(0.01, 1e-5, 0, 0), workers=1, g2=1.0,
                    trace=300.0)
    again = GoodputBatch.from_config(schedule.get_config())
    again.load_state(schedule.state())
    assert again.decisions == schedule.decisions
    assert [p.batch_size for p in again.phases(6)] == [p.batch_size for p in schedule.phases(6)]
    assert again.decides_after(1) and not again.decides_after(0)
    assert again.step_time_model == CostModel(0.01, 1e-5, 0.0, 0.0)


@pytest.mark.parametrize("kwargs,message", [
    ({"min_batch_size": 512, "max_batch_size": 64}, "is below min_batch_size"),
    ({"min_batch_size": 64, "max_batch_size": 512, "initial_batch_size": 1024}, "outside"),
    ({"min_batch_size": 0, "max_batch_size": 512}, "min_batch_size"),
    ({"min_batch_size": 64, "max_batch_size": 512, "step_time_model": (0.1,)}, "(a, c)"),
    ({"min_batch_size": 64, "max_batch_size": 512, "step_time_model": (0, 0)}, "not both 0"),
    ({"min_batch_size": 64, "max_batch_size": 512, "decide_every_epochs": 0}, "decide_every"),
])
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(UserInputError, match=None) as info:
        GoodputBatch(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_online_fit_pins_half_the_step_with_one_batch_then_fits_two():
    one = fit_online([Observation(2, 256, None, 0, 0.02)] * 3)
    assert one.step_time(2, 256, None, 0) == pytest.approx(0.02)
    assert one.a == pytest.approx(0.01)
    truth = CostModel(a=0.004, c=2e-5, alpha=0, beta=0)
    two = fit_online([Observation(2, b, None, 0, truth.step_time(2, b, None, 0))
                      for b in (128, 512)])
    # With one worker count the constant and the all-reduce term are one column: only their sum
    # and the per-sample term are identified, which is all a prediction at W = 2 needs.
    assert two.c == pytest.approx(2e-5) and two.a + two.alpha == pytest.approx(0.004)
    assert two.step_time(2, 2048, None, 0) == pytest.approx(truth.step_time(2, 2048, None, 0))
