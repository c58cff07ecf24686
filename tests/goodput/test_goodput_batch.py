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


def test_online_fit_takes_the_measured_allreduce_as_the_constant():
    """One batch observed: a = max(measured all-reduce, half the step), by hand; capped at 0.9
    of the step (a disturbed timing must leave a per-sample cost)."""
    obs = [Observation(2, 128, None, 0, 0.75)]
    slow_link = fit_online(obs, fixed=0.54)          # the all-reduce dominates: it is the a
    assert slow_link.a == pytest.approx(0.54) and slow_link.c == pytest.approx(0.21 / 64)
    fast_link = fit_online(obs, fixed=0.05)          # below half the step: the reference's a
    assert fast_link.a == pytest.approx(0.375) and fast_link.c == pytest.approx(0.375 / 64)
    disturbed = fit_online(obs, fixed=2.0)
    assert disturbed.a == pytest.approx(0.675) and disturbed.c == pytest.approx(0.075 / 64)
    assert fit_online(obs, fixed=-1.0).a == pytest.approx(0.375)
    for model in (slow_link, fast_link, disturbed):  # every one reproduces the observed step
        assert model.step_time(2, 128, None, 0) == pytest.approx(0.75)


def test_online_fit_of_two_batches_keeps_the_measured_constant_as_a_floor():
    truth = CostModel(a=0.5, c=3e-3, alpha=0, beta=0)
    obs = [Observation(2, b, None, 0, truth.step_time(2, b, None, 0)) for b in (128, 168)]
    exact = fit_online(obs, fixed=0.5)               # consistent: recovered exactly
    assert exact.a + exact.alpha == pytest.approx(0.5) and exact.c == pytest.approx(3e-3)
    # Step times that alone suggest a smaller constant (0.45 s) than the measured all-reduce
    # (0.5 s): the constant stays at the measurement and the per-sample cost is fitted to the
    # rest (hand-computed: least squares of relative errors of 0.45 + 3e-3 b/2 - 0.5 = c b/2).
    low = CostModel(a=0.45, c=3e-3, alpha=0, beta=0)
    obs = [Observation(2, b, None, 0, low.step_time(2, b, None, 0)) for b in (128, 168)]
    floored = fit_online(obs, fixed=0.5)
    assert floored.a + floored.alpha == pytest.approx(0.5)
    y = np.array([low.step_time(2, b, None, 0) for b in (128, 168)])
    x = np.array([64.0, 84.0])
    c = np.sum(x / y * (y - 0.5) / y) / np.sum((x / y) ** 2)
    assert floored.c == pytest.approx(max(c, 0.0))


def test_a_measured_slow_link_grows_the_batch_at_the_first_decision():
    """The emulated cluster's 20 Mbit/s numbers (runs/RESULTS.md section 6): a 0.75 s step at
    batch 128 on 2 workers, 0.54 s of it the all-reduce, B_noise 100. Half the step as the
    constant keeps 128; the measured all-reduce moves to the brute-force optimum of its model."""
    schedule = GoodputBatch(128, 1024)
    candidates = schedule.candidates(granularity=2)
    obs = [Observation(2, 128, None, 0, 0.75)]
    blind = schedule.decide(1, candidates, fit_online(obs), workers=2, g2=1.0, trace=100.0)
    assert blind.batch_size == 128
    seen = schedule.decide(1, candidates, fit_online(obs, fixed=0.54), workers=2, g2=1.0,
                           trace=100.0)
    assert seen.batch_size == _brute_force(candidates, 0.54, 0.21 / 64, 2, 100.0, 128)
    assert seen.batch_size > 128


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
