"""Keras' generic optimizer checks (optimizer_test.py, optimizer_sparse_test.py) for LARS.

Backend-neutral: run here and, from test_backends.py, under JAX and PyTorch. LARS with
momentum 0 on a variable excluded from layer adaptation is plain SGD (w <- w - lr * g), so
Keras' own expected numbers for SGD apply unchanged; the adapted path is checked against the
trust ratio computed by hand.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_largebatch  # noqa: F401  (registers LARS for keras.saving)
from keras_largebatch.optimizers import LARS


def sgd_like(v, **kwargs):
    """LARS reduced to SGD for `v` (no momentum, v excluded from adaptation)."""
    opt = LARS(momentum=0.0, **kwargs)
    opt.exclude_from_layer_adaptation(var_list=[v])
    return opt


def close(a, b, atol=1e-6):
    np.testing.assert_allclose(ops.convert_to_numpy(a), np.asarray(b), atol=atol, rtol=1e-6)


def test_clipnorm():  # optimizer_test.test_clip_norm
    opt = LARS(clipnorm=1.0)
    grad = [ops.array([100.0, 100.0])]
    close(opt._clip_gradients(grad)[0], [2**0.5 / 2, 2**0.5 / 2])


def test_clipvalue():  # optimizer_test.test_clip_value
    opt = LARS(clipvalue=1.0)
    grad = [ops.array([100.0, 100.0])]
    close(opt._clip_gradients(grad)[0], [1.0, 1.0])


def test_global_clipnorm():  # optimizer_test.test_global_clip_norm
    opt = LARS(global_clipnorm=1.0)
    grads = [ops.array([100.0, 100.0]), ops.array([100.0, 100.0])]
    clipped = opt._clip_gradients(grads)
    close(clipped[0], [0.5, 0.5])
    close(clipped[1], [0.5, 0.5])


def test_clipnorm_feeds_the_trust_ratio():
    # Adapted kernel w = [[3, 4]], g = [[30, 40]] clipped to norm 1 -> [[0.6, 0.8]];
    # lambda = 0.1 * 5 / 1 = 0.5, w1 = w - 0.5 * 0.5 * g_clipped = [[2.85, 3.8]].
    w = keras.Variable(np.array([[3.0, 4.0]], "float32"))
    opt = LARS(learning_rate=0.5, momentum=0.0, trust_coefficient=0.1, clipnorm=1.0)
    opt.apply_gradients([(ops.array([[30.0, 40.0]]), w)])
    close(w, [[2.85, 3.8]])


def test_ema():  # optimizer_test.test_ema
    v = keras.Variable([[3.0, 4.0], [5.0, 6.0]])
    grads = ops.array([[1.0, 1.0], [1.0, 1.0]])
    opt = sgd_like(v, learning_rate=1.0, use_ema=True, ema_momentum=0.9,
                   ema_overwrite_frequency=3)
    opt.apply_gradients([(grads, v)])
    close(v, [[2.0, 3.0], [4.0, 5.0]])
    close(opt._model_variables_moving_average[0], [[2.0, 3.0], [4.0, 5.0]])
    opt.apply_gradients([(grads, v)])
    close(v, [[1.0, 2.0], [3.0, 4.0]])
    close(opt._model_variables_moving_average[0], [[1.9, 2.9], [3.9, 4.9]])
    opt.apply_gradients([(grads, v)])
    close(v, [[1.71, 2.71], [3.71, 4.71]])  # overwritten with the EMA at step 3


def test_gradient_accumulation():  # optimizer_test.test_gradient_accumulation
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = ops.array([[1.0, 1.0], [1.0, 1.0]])
    opt = sgd_like(v, learning_rate=1.0, gradient_accumulation_steps=3)
    assert opt.gradient_accumulation_steps == 3
    opt.apply_gradients([(grads, v)])
    close(v, [[1.0, 2.0], [3.0, 4.0]])
    close(opt._accumulated_gradients[0], [[1.0, 1.0], [1.0, 1.0]])
    assert int(ops.convert_to_numpy(opt.iterations)) == 0
    opt.apply_gradients([(grads, v)])
    close(opt._accumulated_gradients[0], [[2.0, 2.0], [2.0, 2.0]])
    opt.apply_gradients([(grads * 2.0, v)])
    # The mean of (1, 1, 2) applied once: 1 - 4/3 (what keras.optimizers.SGD gives too).
    close(v, [[-1 / 3, 2 / 3], [5 / 3, 8 / 3]])
    reference = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    sgd = keras.optimizers.SGD(learning_rate=1.0, gradient_accumulation_steps=3)
    for g in (grads, grads, grads * 2.0):
        sgd.apply_gradients([(g, reference)])
    close(v, ops.convert_to_numpy(reference))
    close(opt._accumulated_gradients[0], [[0.0, 0.0], [0.0, 0.0]])
    assert int(ops.convert_to_numpy(opt.iterations)) == 1


def test_loss_scale_factor():  # optimizer_test.test_loss_scale_factor
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    opt = sgd_like(v, learning_rate=1.0, loss_scale_factor=2.0)
    close(opt.scale_loss(ops.array(3.0)), 6.0)
    opt.apply_gradients([(ops.array([[2.0, 2.0], [2.0, 2.0]]), v)])  # unscaled: 1.0
    close(v, [[0.0, 1.0], [2.0, 3.0]])


def test_constraints_are_applied():  # optimizer_test.test_constraints_are_applied
    v = keras.Variable(np.random.RandomState(0).random((2, 2)) - 1.0)
    v.constraint = keras.constraints.NonNeg()
    opt = LARS(learning_rate=0.0001)
    opt.apply_gradients([(ops.zeros((2, 2)), v)])
    assert float(np.min(ops.convert_to_numpy(v))) == pytest.approx(0.0)


def test_save_and_load_own_variables_then_continue_identically():  # get/set weights
    rng = np.random.RandomState(1)
    init, grads = rng.randn(3, 2).astype("float32"), rng.randn(4, 3, 2).astype("float32")
    a, b = keras.Variable(init), keras.Variable(init)
    opt_a = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01)
    for g in grads[:2]:
        opt_a.apply_gradients([(ops.array(g), a)])
    store = {}
    opt_a.save_own_variables(store)
    b.assign(a)
    opt_b = LARS.from_config(opt_a.get_config())
    opt_b.build([b])
    opt_b.load_own_variables(store)
    for g in grads[2:]:
        opt_a.apply_gradients([(ops.array(g), a)])
        opt_b.apply_gradients([(ops.array(g), b)])
    np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_get_config_and_serialize_round_trip():  # optimizer_test.test_get_config
    opt = LARS(learning_rate=0.3, momentum=0.8, weight_decay=1e-4, trust_coefficient=0.02,
               epsilon=1e-9, nesterov=True, exclude_rank_1=True, clipnorm=2.0)
    opt.exclude_from_layer_adaptation(var_names=["head"])
    config = opt.get_config()
    assert config["exclude_rank_1"] is True and config["weight_decay"] == 1e-4
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, LARS)
    assert restored.get_config() == config


def test_model_with_lars_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=LARS(learning_rate=0.1), loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "lars.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, LARS)
    for p, q in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(p), ops.convert_to_numpy(q))


def _sparse_gradient(values, indices, shape):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(values, indices, dense_shape=shape)
    if backend == "jax":
        from jax.experimental import sparse as jax_sparse

        return jax_sparse.BCOO((values.reshape(-1), np.array(
            [[i, j] for i in indices for j in range(shape[1])])), shape=shape)
    pytest.skip(f"no sparse gradients on the {backend} backend")


def test_sparse_gradients_equal_their_dense_version():  # optimizer_sparse_test
    rng = np.random.RandomState(2)
    init = rng.randn(5, 3).astype("float32")
    rows = np.array([1, 3])
    values = rng.randn(2, 3).astype("float32")
    dense = np.zeros_like(init)
    dense[rows] = values
    sparse_var, dense_var = keras.Variable(init), keras.Variable(init)
    sparse_opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01)
    dense_opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01)
    for _ in range(2):
        sparse_opt.apply_gradients([(_sparse_gradient(values, rows, init.shape), sparse_var)])
        dense_opt.apply_gradients([(ops.array(dense), dense_var)])
    close(sparse_var, ops.convert_to_numpy(dense_var))
