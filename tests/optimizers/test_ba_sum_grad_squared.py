"""ba_sum_grad_squared.py: batched sums of squared per-example gradients equal brute force."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.models import build_model
from keras_largebatch.optimizers.ba_covariance import DiagonalCovariance
from keras_largebatch.optimizers.ba_momentum import BAMomentum
from keras_largebatch.optimizers.ba_sum_grad_squared import (
    batched_sum_grad_squared,
    uncovered_layers,
)

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def small_cnn(seed=0, dropout=0.0, regularizer=None):
    """Convolutions with stride / padding / dilation variants, a Dense on positions, a shared
    Dense called twice, weightless layers in between."""
    keras.utils.set_random_seed(seed)
    conv = keras.layers.Conv2D
    inputs = keras.Input((12, 12, 2))
    x = conv(4, 3, padding="same", activation="tanh", kernel_regularizer=regularizer)(inputs)
    x = conv(5, 3, strides=2, padding="valid", activation="relu")(x)  # 5x5
    x = conv(3, 2, strides=2, padding="same", use_bias=False)(x)  # 3x3
    x = conv(4, 3, dilation_rate=2, padding="same", activation="elu")(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Reshape((9, 4))(x)
    x = keras.layers.Dense(3, activation="tanh")(x)  # per position: g_n = sum_t a_t^T dz_t
    x = keras.layers.Flatten()(x)
    shared = keras.layers.Dense(27, activation="sigmoid")
    x = shared(shared(x))  # one weight, two calls
    outputs = keras.layers.Dense(5)(x)
    return keras.Model(inputs, outputs)


def strided_cnn(seed=0):
    """The AlexNet first layer's shape of convolution: 11x11, stride 4, valid."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((27, 27, 3)),
        keras.layers.Conv2D(6, 11, strides=4, padding="valid", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])


def brute_force(model, x, y, loss_fn=LOSS):
    """Per-example gradients of one batched training pass (same dropout masks), one example at
    a time: (sum_n g_n, sum_n g_n**2) per trainable variable, in float64."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        losses = loss_fn(y, model(x, training=True))
        reg = tf.add_n(model.losses) if model.losses else 0.0
        per_example = [losses[i] + reg for i in range(len(x))]
    grads = [[g.numpy().astype(np.float64) for g in tape.gradient(loss, variables)]
             for loss in per_example]
    return ([sum(g[k] for g in grads) for k in range(len(variables))],
            [sum(g[k] ** 2 for g in grads) for k in range(len(variables))])


def check(model, x, y, rtol=2e-5):
    seeds = [v.numpy() for v in model.non_trainable_variables]
    want_sum, want_sq = brute_force(model, x, y)
    for var, value in zip(model.non_trainable_variables, seeds):
        var.assign(value)  # the same dropout masks in the batched pass
    n = len(x)
    got = batched_sum_grad_squared(model, lambda p: LOSS(y, p), x, model.trainable_variables, n)
    for v, ws, wq, gs, gq in zip(model.trainable_variables, want_sum, want_sq,
                                 got.grad_sum, got.sq_sum):
        assert gs.shape == v.shape and gq.shape == v.shape
        np.testing.assert_allclose(gq, wq, rtol=rtol, atol=rtol * np.abs(wq).max(), err_msg=v.path)
        np.testing.assert_allclose(gs, ws, rtol=rtol, atol=rtol * np.abs(ws).max(), err_msg=v.path)


def data(shape, n=6, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *shape)).astype("float32"),
            rng.integers(0, classes, size=(n,)).astype("int32"))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_small_cnn_matches_brute_force(dropout):
    model = small_cnn(dropout=dropout)
    assert uncovered_layers(model, model.trainable_variables) == []
    check(model, *data((12, 12, 2)))


def test_strided_valid_convolution_matches_brute_force():
    check(strided_cnn(), *data((27, 27, 3), classes=4))


def test_seed_002_cnn_matches_brute_force():
    keras.utils.set_random_seed(3)
    model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                        filters=(8, 16, 32), dense_units=24)
    check(model, *data((28, 28, 1), n=8, classes=10), rtol=1e-4)


def test_diagonal_statistics_equal_the_per_example_path():
    """ChunkStatistics and BAMomentum's m*, mu, sigma, s: batched == vectorized_map, with an
    L2 regulariser (added to every example's gradient) on a deterministic network."""
    x, y = data((12, 12, 2), n=8)
    out = []
    for per_example in (True, False):
        model = small_cnn(regularizer=keras.regularizers.L2(1e-2))
        stats = DiagonalCovariance(per_example=per_example).chunk_statistics(model, LOSS, x, y)
        opt = BAMomentum(learning_rate=0.05, covariance="diagonal", min_increment=4)
        opt._estimator = DiagonalCovariance(per_example=per_example)
        opt.build(model.trainable_variables)
        history = []
        for k in range(2):  # Y_t grows over two chunks
            xs, ys = x[4 * k : 4 * k + 4], y[4 * k : 4 * k + 4]
            opt.accumulate(opt.compute_chunk_statistics(model, LOSS, xs, ys))
            history.append({k: float(v) for k, v in opt.statistics().items()})
        out.append((stats, history))
    (ref, ref_hist), (new, new_hist) = out
    np.testing.assert_allclose(new.loss_sum, ref.loss_sum, rtol=1e-6)
    np.testing.assert_allclose(new.y_pred, ref.y_pred, rtol=1e-5, atol=1e-6)
    for a, b in zip(new.grad_sum + new.sq_sum, ref.grad_sum + ref.sq_sum):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())
    for a, b in zip(new_hist, ref_hist):
        assert a["m_star"] == b["m_star"] and a["accumulated"] == b["accumulated"]
        for key in ("mu", "sigma", "s"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


def test_uncovered_layers_are_named_and_take_the_per_example_path():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(3), keras.layers.LayerNormalization(name="ln"),
        keras.layers.BatchNormalization(center=False, scale=False, name="bn"),
        keras.layers.Dense(2),
    ])
    assert uncovered_layers(model, model.trainable_variables) == [
        "ln (LayerNormalization)", "bn (BatchNormalization)"]
    model.get_layer("bn").trainable = False  # inference-mode BN treats examples alone
    assert uncovered_layers(model, model.trainable_variables) == ["ln (LayerNormalization)"]
    x, y = data((4,), classes=2)
    with pytest.warns(UserWarning, match=r"ln \(LayerNormalization\).*per-example gradients"):
        stats = DiagonalCovariance().chunk_statistics(model, LOSS, x, y)
    ref = DiagonalCovariance(per_example=True).chunk_statistics(model, LOSS, x, y)
    for a, b in zip(stats.sq_sum, ref.sq_sum):
        np.testing.assert_array_equal(a, b)


def test_layers_are_restored_and_saving_still_works(tmp_path):
    model = small_cnn()
    dense = model.layers[-1]
    x, y = data((12, 12, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tf.function(lambda a, b: DiagonalCovariance().chunk_statistics(model, LOSS, a, b).sq_sum)(
            x, y)
    assert "call" not in vars(dense) and dense.activation is keras.activations.linear
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "m.keras")(x), model(x),
                               rtol=1e-6)


def test_two_replicas_give_the_statistics_of_one(one_cpu_strategy, two_cpu_strategy):
    """Each replica thread records its own pass while the layers' wrappers are shared."""
    x, y = data((12, 12, 2), n=16)
    sigmas = []
    for strategy in (one_cpu_strategy, two_cpu_strategy):
        with strategy.scope():
            model = small_cnn()
            opt = BAMomentum(learning_rate=0.05, covariance="diagonal", min_increment=8)
            opt.build(model.trainable_variables)
        data_set = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        iterator = iter(strategy.experimental_distribute_dataset(data_set))

        @tf.function
        def accumulate(strategy=strategy, model=model, opt=opt, iterator=iterator):
            xb, yb = next(iterator)
            strategy.run(lambda a, b: opt.accumulate(opt.compute_chunk_statistics(
                model, LOSS, a, b)), args=(xb, yb))
            return opt.statistics()["sigma"]

        sigmas.append([float(accumulate()) for _ in range(2)])
    np.testing.assert_allclose(sigmas[1], sigmas[0], rtol=1e-5)
    assert "call" not in vars(model.layers[1])
