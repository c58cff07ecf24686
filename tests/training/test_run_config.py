"""RunConfig's checks of the flat `train.*` values, in-process (the CLI cases are in
tests/test_cli_errors.py and tests/test_cli_bad_input.py)."""

import pytest

from keras_largebatch.errors import UserInputError
from keras_largebatch.training.run_config import MAX_EPOCHS, OptimizationConfig


@pytest.mark.parametrize("epochs,expected", [(3, 3), (2.0, 2), (MAX_EPOCHS, MAX_EPOCHS)])
def test_whole_epoch_counts_are_accepted(epochs, expected):
    assert OptimizationConfig(epochs=epochs).epochs == epochs
    assert int(OptimizationConfig(epochs=epochs).epochs) == expected


@pytest.mark.parametrize("epochs,says", [
    (MAX_EPOCHS + 1, "train.epochs=1000001 is more than 1,000,000 epochs"),
    (10**22 + 1, "train.epochs=10000000000000000000001 is more than 1,000,000"),  # not "not an int"
    (0, "train.epochs must be a positive int; got 0"),
    (2.5, "must be a positive int; got 2.5"),
    (float("nan"), "must be a positive int; got nan"),
    (float("inf"), "must be a positive int; got inf"),
    (True, "must be a positive int; got True"),
    ("3", "must be a positive int; got '3'"),
])
def test_bad_epoch_counts_name_the_value(epochs, says):
    with pytest.raises(UserInputError, match=says.replace("(", r"\(")):
        OptimizationConfig(epochs=epochs)
