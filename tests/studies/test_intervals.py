"""Paired t-intervals over seeds against scipy and a hand computation; the verdicts."""

import math

import pytest
from scipy import stats

from keras_largebatch.studies.intervals import (
    interval_verdict,
    paired_t_interval,
)


def test_by_hand_three_seeds():
    # d = 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.302653, half = 4.302653 / sqrt(3)
    iv = paired_t_interval([11, 12, 13], [10, 10, 10])
    assert iv.mean == pytest.approx(2.0) and iv.std == pytest.approx(1.0)
    assert iv.high - iv.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_against_scipy():
    a = [89.12, 88.96, 89.30, 88.70, 89.05]
    b = [88.96, 88.80, 89.35, 88.41, 88.90]
    d = [x - y for x, y in zip(a, b)]
    low, high = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=stats.sem(d))
    iv = paired_t_interval(a, b)
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))


def test_verdicts():
    iv = paired_t_interval([3.0, 3.2, 2.9], [1.0, 1.1, 1.0])       # about +2.0 +- 0.3
    assert interval_verdict(iv) == "reproduced"
    assert interval_verdict(iv, min_effect=1.5) == "reproduced"
    assert interval_verdict(iv, min_effect=5.0) == "not reproduced"
    assert interval_verdict(iv, direction=-1) == "not reproduced"
    wide = paired_t_interval([1.0, -1.0, 0.5], [0.0, 0.0, 0.0])
    assert interval_verdict(wide) == "inconclusive"


@pytest.mark.parametrize("a,b,message", [([1.0], [1.0], "at least 2 seeds"),
                                         ([1.0, 2.0], [1.0], "one per seed")])
def test_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_t_interval(a, b)
