"""Issue 1: a BAModel saved to `.keras` mid-training continues exactly after loading.

Keras' answer for models with state in their compile arguments is `get_compile_config` /
`compile_from_config`; the reference is the same model trained without interruption.
"""

import keras
import numpy as np
import pytest

pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("BAModel is TensorFlow-only", allow_module_level=True)

from keras_largebatch.optimizers import BAMomentum  # noqa: E402
from keras_largebatch.training.steps import BAModel  # noqa: E402  (registers BAModel)

M0 = 16


def data(n=320, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ rng.normal(size=(d, 1)) + 2.0 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def fresh_model():
    keras.utils.set_random_seed(3)
    net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="tanh"),
                            keras.layers.Dense(1)])
    model = BAModel(net)
    model.compile(optimizer=BAMomentum(learning_rate=0.3, momentum=0.9, min_increment=M0,
                                       max_batch_size=256, loss_floor=8.0),
                  loss=keras.losses.MeanSquaredError())
    return model


def fit_chunks(model, x, y):
    model.fit(x, y, batch_size=M0, shuffle=False, epochs=1, verbose=0)


def test_save_mid_training_and_continue_equals_uninterrupted(tmp_path):
    x, y = data()
    first, second = slice(0, 7 * M0), slice(7 * M0, 20 * M0)  # N = 7 chunks, then M = 13

    reference = fresh_model()
    fit_chunks(reference, x[first], y[first])
    fit_chunks(reference, x[second], y[second])

    model = fresh_model()
    fit_chunks(model, x[first], y[first])
    saved = {
        "iterations": int(model.optimizer.iterations.numpy()),
        "accumulated": float(model.optimizer.accumulated_count.numpy()),
    }
    assert saved["iterations"] >= 1 and saved["accumulated"] > 0  # mid-batch, after updates
    path = str(tmp_path / "ba.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, BAModel) and isinstance(loaded.optimizer, BAMomentum)
    assert int(loaded.optimizer.iterations.numpy()) == saved["iterations"]
    assert float(loaded.optimizer.accumulated_count.numpy()) == saved["accumulated"]
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    fit_chunks(loaded, x[second], y[second])
    assert int(loaded.optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy())
    for a, b in zip(loaded.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
