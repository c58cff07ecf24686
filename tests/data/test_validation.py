"""train.validation_examples: the last N training examples held out, evaluated every epoch,
and the epoch a study would choose on them."""

import json

import keras
import numpy as np
import pytest

from keras_largebatch.data import get_source
from keras_largebatch.data.validation import hold_out
from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import results as rs
from keras_largebatch.training.loop import train

from ..training.helpers import fashion_subset


def test_the_last_n_training_examples_are_held_out():
    full = get_source("fashion_mnist")
    train_part, validation = hold_out(full, 5000)
    images, labels = full.train_arrays
    assert train_part.num_train == 55000 and validation.num_test == 5000
    np.testing.assert_array_equal(train_part.train_arrays[0], images[:55000])
    np.testing.assert_array_equal(validation.test_arrays[0], images[55000:])   # 55000..59999
    np.testing.assert_array_equal(validation.test_arrays[1], labels[55000:])
    assert train_part.test_arrays[1] is full.test_arrays[1]                  # test set unchanged
    assert validation.mean == full.mean and validation.std == full.std


@pytest.mark.parametrize("n", [0, 2048, 10**6])
def test_a_split_that_leaves_nothing_is_one_line(n):
    with pytest.raises(UserInputError, match="between 1 and 2047") as info:
        hold_out(fashion_subset(), n)
    assert "\n" not in str(info.value)


def test_the_choice_is_the_first_epoch_of_the_best_validation_accuracy():
    history = [{"epoch": 1, "validation_accuracy": 0.80, "test_accuracy": 0.79},
               {"epoch": 2, "validation_accuracy": 0.85, "test_accuracy": 0.83},
               {"epoch": 3, "validation_accuracy": 0.85, "test_accuracy": 0.86},
               {"epoch": 4, "validation_accuracy": 0.84, "test_accuracy": 0.87}]
    assert rs.validation_choice(history) == {
        "best_validation_accuracy": 0.85, "best_validation_epoch": 2,
        "test_accuracy_at_best_validation": 0.83}
    assert rs.validation_choice([{"epoch": 1, "test_accuracy": 0.5}]) == {}


def test_a_run_evaluates_the_split_every_epoch(tmp_path, two_cpu_strategy, capsys):
    source = fashion_subset(2048)
    results = train(run_dir=str(tmp_path / "run"), dataset=source, validation_examples=512,
                    batch_size=128, epochs=2, model_options={"filters": (8, 16), "dropout": 0.0},
                    strategy=two_cpu_strategy, verbose=True)
    epochs = results["epochs"]
    shown = [line for line in capsys.readouterr().out.splitlines() if "test_loss:" in line]
    assert [line.split("validation_accuracy: ")[1] for line in shown] == [
        f"{e['validation_accuracy']:.4f}" for e in epochs]  # the console shows it each epoch
    assert [e["batch_size"] for e in epochs] == [128, 128]
    assert all(0 < e["validation_accuracy"] <= 1 for e in epochs)
    assert results["best_validation_epoch"] in (1, 2)
    # Independent: Keras' own evaluate of the saved model on images 1536..2047, normalised.
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    x, y = source.train_arrays
    x = (x[1536:].astype(np.float32) / 255.0 - source.mean[0]) / source.std[0]
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    loss, accuracy = model.evaluate(x, y[1536:], batch_size=256, verbose=0)
    assert epochs[-1]["validation_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert epochs[-1]["validation_loss"] == pytest.approx(loss, rel=1e-4)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["test_accuracy_at_best_validation"] == on_disk["epochs"][
        on_disk["best_validation_epoch"] - 1]["test_accuracy"]
    assert len(results["epochs"]) == 2 and source.num_train == 2048   # the source is not changed
