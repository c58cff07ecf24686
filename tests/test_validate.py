"""keras_largebatch.validate's whole-number checks against Python's own integer arithmetic:
an int is whole however large (float cannot hold 10**22 + 1 exactly), a float is whole when it
has no fractional part, and nan / inf / bools / strings are not numbers of samples."""

import numpy as np
import pytest

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules.batch import AdaBatch
from keras_largebatch.training.divergence import DivergenceGuard


@pytest.mark.parametrize("value", [0, 1, 2.0, 10**22 + 1, 10**23 + 1, np.int64(7), np.float32(3.0),
                                   -4, 1e300])
def test_whole_numbers(value):
    assert validate.is_whole(value)


@pytest.mark.parametrize("value", [2.5, float("nan"), float("inf"), -float("inf"), True, "3",
                                   None, np.float64(0.5)])
def test_not_whole_numbers(value):
    assert not validate.is_whole(value)


def test_whole_returns_the_exact_int():
    # 10**23 + 1 through float would come back as 99999999999999991611392.
    assert validate.whole("n", 10**23 + 1) == 10**23 + 1
    assert type(validate.whole("n", 2.0)) is int


@pytest.mark.parametrize("value,says", [
    (10**22 + 1, None),
    (2.5, "n=2.5 is not a whole number"),
    (float("inf"), "n=inf is not a whole number"),
    (0, "n=0 must be >= 1"),
])
def test_whole_names_the_value(value, says):
    if says is None:
        assert validate.whole("n", value) == value
    else:
        with pytest.raises(UserInputError, match=says):
            validate.whole("n", value)


def test_adabatch_takes_a_cap_larger_than_a_float_holds():
    schedule = AdaBatch(initial_batch_size=128, interval_epochs=1, max_batch_size=10**23 + 1)
    assert schedule.get_config()["max_batch_size"] == 10**23 + 1


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 2.5, -1])
def test_divergence_guard_refuses_a_restore_count_that_is_not_whole(value):
    # inf used to end as "OverflowError: cannot convert float infinity to integer".
    with pytest.raises(UserInputError, match="train.max_restores must be an integer >= 0"):
        DivergenceGuard(max_restores=value)
