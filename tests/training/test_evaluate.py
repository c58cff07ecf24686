"""Sharded evaluation (training/build.py `evaluate_fn`): 1 and 2 replicas give the loss and
accuracy of a NumPy reference over every test example, with a test set that is not a multiple
of the batch (the remainder is evaluated, padding is not counted)."""

import keras
import numpy as np
import pytest

from keras_largebatch.data import DataSource
from keras_largebatch.data.eval_inputs import eval_dataset_fn
from keras_largebatch.training.build import evaluate_fn

N_TEST = 203


def _source():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_TEST, 6, 6, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, N_TEST).astype(np.int32)
    return DataSource(name="random", input_shape=(6, 6, 1), num_classes=10, num_train=N_TEST,
                      num_test=N_TEST, mean=(0.5,), std=(0.25,), train_arrays=(images, labels),
                      test_arrays=(images, labels))


def _model(weights=None):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    if weights is not None:
        model.set_weights(weights)
    return model


def _numpy_reference(model, source):
    x = (source.test_arrays[0].astype(np.float32) / 255.0 - 0.5) / 0.25
    logits = np.asarray(model(x, training=False), np.float64)
    labels = source.test_arrays[1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {"loss": -log_softmax[np.arange(len(labels)), labels].mean(),
            "accuracy": float((logits.argmax(axis=1) == labels).mean())}


@pytest.mark.parametrize("batch", [50, 64])
def test_one_and_two_replicas_match_the_numpy_reference(one_cpu_strategy, two_cpu_strategy,
                                                        batch):
    source = _source()
    reference_model = _model()
    expected = _numpy_reference(reference_model, source)
    results = []
    for strategy in (one_cpu_strategy, two_cpu_strategy):
        with strategy.scope():
            model = _model(reference_model.get_weights())
        results.append(evaluate_fn(model, strategy)(eval_dataset_fn(source, batch_size=batch)))
    for result in results:
        assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert result["accuracy"] == pytest.approx(expected["accuracy"], rel=1e-12)
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)
    assert results[1]["accuracy"] == results[0]["accuracy"]
