"""LARS (seed 004, Algorithm 1): hand-computed steps, a NumPy reference, serialization,
`.keras` save/load/continue, LossScaleOptimizer, XLA and MirroredStrategy equivalence.

Every expected value comes from arithmetic written out here or from `reference_lars`,
a float64 NumPy transcription of Algorithm 1 + Eq. 6 sharing no code with the optimizer.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.models import build_model
from keras_largebatch.optimizers import LARS, LarsTrustRatioLogger

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


# ----------------------------------------------------------------------------------
# Helpers: real Fashion-MNIST images, the NumPy reference, relative comparison
# ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def fashion_mnist_test_split(n: int = 512):
    """The first `n` images and labels of the real Fashion-MNIST test split."""
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)[: n * 784]
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    x = images.reshape(n, 28, 28, 1).astype("float32") / 255.0
    return x, labels.astype("int32")


def reference_lars(
    weights,
    grads_per_step,
    lrs,
    *,
    adapted,
    momentum,
    weight_decay,
    eta,
    epsilon=0.0,
    nesterov=False,
    form="paper",
):
    """Algorithm 1 of seed 004 in float64 NumPy; returns (weights, velocities)."""
    w = [np.asarray(x, np.float64).copy() for x in weights]
    v = [np.zeros_like(x) for x in w]
    for lr, grads in zip(lrs, grads_per_step, strict=True):
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64)
            if adapted[i]:
                w_norm = np.sqrt(np.sum(w[i] ** 2))
                g_norm = np.sqrt(np.sum(g**2))
                d = g + weight_decay * w[i]
                if form == "paper":
                    denom = g_norm + weight_decay * w_norm + epsilon
                else:
                    denom = np.sqrt(np.sum(d**2)) + epsilon
                lam = eta * w_norm / denom if (w_norm > 0 and g_norm > 0) else 1.0
                step = lr * lam * d
            else:
                step = lr * g
            v[i] = momentum * v[i] + step
            w[i] = w[i] - (momentum * v[i] + step if nesterov else v[i])
    return w, v


def assert_rel_close(actual, expected, rtol, what=""):
    """||actual - expected|| <= rtol * ||expected|| (per array)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    err = np.linalg.norm(actual - expected)
    scale = max(np.linalg.norm(expected), 1e-30)
    assert err <= rtol * scale, f"{what}: relative error {err / scale:.3g} > {rtol}"


def f32(x):
    return np.asarray(x, np.float32)


def small_dense_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def fit_steps(model, x, y, *, batch_size, steps):
    model.fit(
        x[: batch_size * steps],
        y[: batch_size * steps],
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
    )


# ----------------------------------------------------------------------------------
# Hand-computed single steps
# ----------------------------------------------------------------------------------


def test_adapted_variable_single_step_by_hand():
    # w = [[3, 4]]: ||w|| = 5.  g = [[0.8, -0.6]]: ||g|| = 1 (orthogonal to w).
    # lr = 0.5, eta = 0.1, beta = 0.5, m = 0.9:
    #   lambda = 0.1 * 5 / (1 + 0.5 * 5) = 0.5 / 3.5 = 1/7
    #   g + beta * w = [0.8 + 1.5, -0.6 + 2.0] = [2.3, 1.4]
    #   v1 = 0.9 * 0 + 0.5 * (1/7) * [2.3, 1.4] = [2.3/14, 0.1] = [0.16428571, 0.1]
    #   w1 = w - v1 = [2.83571429, 3.9]
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.5, trust_coefficient=0.1)
    w = keras.Variable(f32([[3.0, 4.0]]), name="kernel")
    opt.apply_gradients([(f32([[0.8, -0.6]]), w)])
    np.testing.assert_allclose(w.numpy(), [[3.0 - 2.3 / 14, 3.9]], rtol=1e-6)
    np.testing.assert_allclose(opt.momentums[0].numpy(), [[2.3 / 14, 0.1]], rtol=1e-6)
    np.testing.assert_allclose(opt.trust_ratios()["kernel"].numpy(), 1 / 7, rtol=1e-6)


def test_adapted_variable_two_steps_with_momentum_by_hand():
    # w0 = [[3, 4]], g = [[0.6, 0.8]] (parallel to w) both steps; lr 0.5, eta 0.1,
    # beta 0.01, m 0.9.
    # Step 1: lambda = 0.1 * 5 / (1 + 0.05) = 0.5 / 1.05
    #         g + beta w0 = [0.63, 0.84] = 1.05 * [0.6, 0.8]
    #         v1 = 0.5 * (0.5 / 1.05) * 1.05 * [0.6, 0.8] = [0.15, 0.2]
    #         w1 = [2.85, 3.8]                       (||w1|| = 4.75)
    # Step 2: lambda = 0.1 * 4.75 / (1 + 0.0475) = 0.475 / 1.0475
    #         g + beta w1 = [0.6285, 0.838] = 1.0475 * [0.6, 0.8]
    #         step = 0.5 * 0.475 * [0.6, 0.8] = [0.1425, 0.19]
    #         v2 = 0.9 * [0.15, 0.2] + [0.1425, 0.19] = [0.2775, 0.37]
    #         w2 = [2.85 - 0.2775, 3.8 - 0.37] = [2.5725, 3.43]
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.1)
    w = keras.Variable(f32([[3.0, 4.0]]), name="kernel")
    g = f32([[0.6, 0.8]])
    opt.apply_gradients([(g, w)])
    np.testing.assert_allclose(w.numpy(), [[2.85, 3.8]], rtol=1e-6)
    np.testing.assert_allclose(opt.trust_ratios()["kernel"].numpy(), 0.5 / 1.05, rtol=1e-6)
    opt.apply_gradients([(g, w)])
    np.testing.assert_allclose(opt.momentums[0].numpy(), [[0.2775, 0.37]], rtol=1e-6)
    np.testing.assert_allclose(w.numpy(), [[2.5725, 3.43]], rtol=1e-6)
    np.testing.assert_allclose(opt.trust_ratios()["kernel"].numpy(), 0.475 / 1.0475, rtol=1e-6)


def test_nesterov_single_step_by_hand():
    # Same numbers as step 1 above: step = [0.15, 0.2], v1 = step.
    # Nesterov: w1 = w0 - (m * v1 + step) = [3, 4] - 1.9 * [0.15, 0.2] = [2.715, 3.62]
    opt = LARS(
        learning_rate=0.5,
        momentum=0.9,
        weight_decay=0.01,
        trust_coefficient=0.1,
        nesterov=True,
    )
    w = keras.Variable(f32([[3.0, 4.0]]), name="kernel")
    opt.apply_gradients([(f32([[0.6, 0.8]]), w)])
    np.testing.assert_allclose(w.numpy(), [[2.715, 3.62]], rtol=1e-6)


def test_decay_in_gradient_norm_form_single_step_by_hand():
    # Model Garden form: lambda = eta * ||w|| / ||g + beta w||.
    # w = [[3, 4]], g = [[0.8, -0.6]], beta = 0.5: g + beta w = [2.3, 1.4],
    # ||.|| = sqrt(5.29 + 1.96) = sqrt(7.25); lambda = 0.5 / sqrt(7.25)
    # w1 = w - 0.5 * lambda * [2.3, 1.4]
    opt = LARS(
        learning_rate=0.5,
        momentum=0.9,
        weight_decay=0.5,
        trust_coefficient=0.1,
        trust_ratio_form="decay_in_gradient_norm",
    )
    w = keras.Variable(f32([[3.0, 4.0]]), name="kernel")
    opt.apply_gradients([(f32([[0.8, -0.6]]), w)])
    lam = 0.5 / math.sqrt(7.25)
    np.testing.assert_allclose(
        w.numpy(), [[3.0 - 0.5 * lam * 2.3, 4.0 - 0.5 * lam * 1.4]], rtol=1e-6
    )
    np.testing.assert_allclose(opt.trust_ratios()["kernel"].numpy(), lam, rtol=1e-6)


def test_rank_1_bias_is_excluded_by_hand():
    # Bias b = [1, 2], g = [0.5, -0.5], lr 0.5, m 0.9, beta 0.01 (not applied):
    #   v1 = 0.5 * g = [0.25, -0.25];            b1 = [0.75, 2.25]
    #   v2 = 0.9 * v1 + 0.5 * g = [0.475, -0.475]; b2 = [0.275, 2.725]
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.1,
               exclude_rank_1=True)
    b = keras.Variable(f32([1.0, 2.0]), name="bias")
    g = f32([0.5, -0.5])
    opt.apply_gradients([(g, b)])
    np.testing.assert_allclose(b.numpy(), [0.75, 2.25], rtol=1e-6)
    opt.apply_gradients([(g, b)])
    np.testing.assert_allclose(b.numpy(), [0.275, 2.725], rtol=1e-6)
    assert opt.trust_ratios() == {}
    assert opt.trust_ratios(include_excluded=True)["bias"].numpy() == 1.0


def test_rank_1_adapted_when_exclude_rank_1_is_false():
    # Paper-literal: the bias [3, 4] with g = [0.6, 0.8] is adapted:
    # lambda = 0.1 * 5 / (1 + 0.05) and (as in the two-step test) b1 = [2.85, 3.8].
    opt = LARS(
        learning_rate=0.5,
        momentum=0.9,
        weight_decay=0.01,
        trust_coefficient=0.1,
        exclude_rank_1=False,
    )
    b = keras.Variable(f32([3.0, 4.0]), name="bias")
    opt.apply_gradients([(f32([0.6, 0.8]), b)])
    np.testing.assert_allclose(b.numpy(), [2.85, 3.8], rtol=1e-6)


def test_default_adapts_a_bias_as_the_paper_does():
    # Issue 16: the default follows seed 004 (every layer adapted, biases included).
    # Bias [3, 4], g = [0.6, 0.8], lr 0.5, eta 0.1, beta 0.01:
    #   lambda = 0.1 * 5 / (1 + 0.01 * 5) = 0.47619...; v1 = 0.5 * lambda * (g + 0.01 * b)
    #   b1 = b - v1 = [3 - 0.2381 * 0.63, 4 - 0.2381 * 0.84]
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.1)
    assert opt.exclude_rank_1 is False
    b = keras.Variable(f32([3.0, 4.0]), name="bias")
    opt.apply_gradients([(f32([0.6, 0.8]), b)])
    lam = 0.1 * 5.0 / (1.0 + 0.01 * 5.0)
    expected = [3.0 - 0.5 * lam * 0.63, 4.0 - 0.5 * lam * 0.84]
    np.testing.assert_allclose(b.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(opt.trust_ratios()["bias"].numpy(), lam, rtol=1e-6)


@pytest.mark.parametrize("how", ["var_names", "var_list"])
def test_name_excluded_kernel_by_hand(how):
    # Kernel [[3, 4]] of the excluded "head", g = [[0.6, 0.8]], lr 0.5, beta 0.01:
    #   v1 = 0.5 * g = [0.3, 0.4]; w1 = [2.7, 3.6]   (no trust ratio, no decay)
    # The other kernel [[3, 4]] is adapted: w1 = [2.85, 3.8] as in the two-step test.
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.1)
    head = keras.Variable(f32([[3.0, 4.0]]), name="head_kernel")
    body = keras.Variable(f32([[3.0, 4.0]]), name="body_kernel")
    if how == "var_names":
        opt.exclude_from_layer_adaptation(var_names=["head"])
    else:
        opt.exclude_from_layer_adaptation(var_list=[head])
    g = f32([[0.6, 0.8]])
    opt.apply_gradients([(g, head), (g, body)])
    np.testing.assert_allclose(head.numpy(), [[2.7, 3.6]], rtol=1e-6)
    np.testing.assert_allclose(body.numpy(), [[2.85, 3.8]], rtol=1e-6)
    assert list(opt.trust_ratios()) == ["body_kernel"]


def test_exclude_from_weight_decay_keeps_the_trust_ratio():
    # w = [[3, 4]], g = [[0.8, -0.6]], beta = 0.5 but the kernel is excluded from decay:
    #   lambda = 0.1 * 5 / 1 = 0.5;  w1 = w - 0.5 * 0.5 * [0.8, -0.6] = [2.8, 4.15]
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.5, trust_coefficient=0.1)
    opt.exclude_from_weight_decay(var_names=["kernel"])
    w = keras.Variable(f32([[3.0, 4.0]]), name="kernel")
    opt.apply_gradients([(f32([[0.8, -0.6]]), w)])
    np.testing.assert_allclose(w.numpy(), [[2.8, 4.15]], rtol=1e-6)


def test_zero_norm_variable_and_zero_gradient_use_lambda_1():
    # Zero weights: ||w|| = 0 -> lambda = 1: w1 = 0 - 0.5 * 1 * ([0.6, 0.8] + 0.01 * 0)
    #   = [-0.3, -0.4].
    # Zero gradient: ||g|| = 0 -> lambda = 1: w1 = [3, 4] - 0.5 * 0.01 * [3, 4]
    #   = [2.985, 3.98].
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.1)
    zero_w = keras.Variable(f32([[0.0, 0.0]]), name="zero_kernel")
    zero_g = keras.Variable(f32([[3.0, 4.0]]), name="still_kernel")
    opt.apply_gradients([(f32([[0.6, 0.8]]), zero_w), (f32([[0.0, 0.0]]), zero_g)])
    np.testing.assert_allclose(zero_w.numpy(), [[-0.3, -0.4]], rtol=1e-6)
    np.testing.assert_allclose(zero_g.numpy(), [[2.985, 3.98]], rtol=1e-6)
    ratios = opt.trust_ratios()
    assert ratios["zero_kernel"].numpy() == 1.0
    assert ratios["still_kernel"].numpy() == 1.0


def test_zero_momentum_is_plain_lars_sgd():
    # m = 0: w1 = w - lr * lambda * (g + beta w) = [[3, 4]] - [0.15, 0.2] (as above).
    opt = LARS(learning_rate=0.5, momentum=0.0, weight_decay=0.01, trust_coefficient=0.1)
    w = keras.Variable(f32([[3.0, 4.0]]), name="kernel")
    opt.apply_gradients([(f32([[0.6, 0.8]]), w)])
    np.testing.assert_allclose(w.numpy(), [[2.85, 3.8]], rtol=1e-6)
    assert opt.momentums == []


# ----------------------------------------------------------------------------------
# Five-step golden values against the NumPy reference
# ----------------------------------------------------------------------------------

GOLDEN_CASES = {
    "rank_1_excluded": dict(momentum=0.9, weight_decay=0.1, exclude_rank_1=True),
    "decay_in_gradient_norm": dict(
        momentum=0.9, weight_decay=0.1, trust_ratio_form="decay_in_gradient_norm",
        exclude_rank_1=True,
    ),
    "nesterov": dict(momentum=0.9, weight_decay=0.1, nesterov=True, exclude_rank_1=True),
    "no_momentum_no_decay_eps": dict(momentum=0.0, weight_decay=0.0, epsilon=1e-2,
                                     exclude_rank_1=True),
    "all_adapted": dict(momentum=0.8, weight_decay=0.05, exclude_rank_1=False),
    "default_adapts_all": dict(momentum=0.8, weight_decay=0.05),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_five_steps_match_numpy_reference(case):
    kwargs = GOLDEN_CASES[case]
    rng = np.random.default_rng(4)
    init = [
        rng.normal(size=(3, 4)),  # adapted kernel
        rng.normal(size=(4,)),  # bias: excluded unless exclude_rank_1=False
        rng.normal(size=(2, 3)),  # "head" kernel: excluded by name
        np.zeros((2, 2)),  # zero-norm kernel at step 1
    ]
    names = ["body_kernel", "body_bias", "head_kernel", "zero_kernel"]
    grads = [[rng.normal(scale=0.1, size=x.shape) for x in init] for _ in range(5)]
    lr, eta = 2.0, 0.02

    variables = [keras.Variable(f32(x), name=n) for x, n in zip(init, names, strict=True)]
    opt = LARS(learning_rate=lr, trust_coefficient=eta, **kwargs)
    opt.exclude_from_layer_adaptation(var_names=["head"])
    for step_grads in grads:
        opt.apply_gradients(zip([f32(g) for g in step_grads], variables, strict=True))

    adapted = [True, not kwargs.get("exclude_rank_1", False), False, True]
    expected_w, expected_v = reference_lars(
        init,
        grads,
        [lr] * 5,
        adapted=adapted,
        momentum=kwargs["momentum"],
        weight_decay=kwargs["weight_decay"],
        eta=eta,
        epsilon=kwargs.get("epsilon", 0.0),
        nesterov=kwargs.get("nesterov", False),
        form=kwargs.get("trust_ratio_form", "paper"),
    )
    for var, ew, name in zip(variables, expected_w, names, strict=True):
        assert_rel_close(var.numpy(), ew, 1e-5, name)
        assert not np.allclose(var.numpy(), f32(init[names.index(name)]))
    if kwargs["momentum"]:
        for slot, ev, name in zip(opt.momentums, expected_v, names, strict=True):
            assert_rel_close(slot.numpy(), ev, 1e-5, f"momentum of {name}")


def test_learning_rate_schedule_matches_reference():
    # ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5): lr_t = 0.5 * 0.5**t.
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, 1, 0.5)
    opt = LARS(learning_rate=schedule, momentum=0.9, weight_decay=0.01, exclude_rank_1=True)
    rng = np.random.default_rng(1)
    init = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    grads = [[rng.normal(size=x.shape) for x in init] for _ in range(3)]
    variables = [keras.Variable(f32(x), name=n) for x, n in zip(init, "kb", strict=True)]
    for step_grads in grads:
        opt.apply_gradients(zip([f32(g) for g in step_grads], variables, strict=True))
    expected_w, _ = reference_lars(
        init,
        grads,
        [0.5, 0.25, 0.125],
        adapted=[True, False],
        momentum=0.9,
        weight_decay=0.01,
        eta=0.001,
    )
    for var, ew in zip(variables, expected_w, strict=True):
        assert_rel_close(var.numpy(), ew, 1e-5, var.name)


# ----------------------------------------------------------------------------------
# Serialization
# ----------------------------------------------------------------------------------


def _configured_lars():
    schedule = keras.optimizers.schedules.PolynomialDecay(2.0, 100, 0.0, power=2.0)
    opt = LARS(
        learning_rate=schedule,
        momentum=0.85,
        weight_decay=5e-4,
        trust_coefficient=0.002,
        epsilon=1e-9,
        nesterov=True,
        exclude_rank_1=False,
        trust_ratio_form="decay_in_gradient_norm",
        clipnorm=1.0,
    )
    opt.exclude_from_layer_adaptation(
        var_list=[keras.Variable(f32([[1.0]]), name="head_kernel")],
        var_names=["logits"],
    )
    return opt


def _check_same_lars(restored, original):
    assert isinstance(restored, LARS)
    assert restored.get_config() == original.get_config()
    assert restored.coupled_weight_decay == 5e-4
    assert restored.weight_decay is None  # Keras' decoupled decay stays off
    assert restored.momentum == 0.85 and restored.nesterov is True
    assert restored.trust_coefficient == 0.002 and restored.epsilon == 1e-9
    assert restored.trust_ratio_form == "decay_in_gradient_norm"
    assert restored.exclude_rank_1 is False and restored.clipnorm == 1.0
    lr = restored.learning_rate  # PolynomialDecay at iteration 0
    np.testing.assert_allclose(float(lr), 2.0)
    # Exclusions survive: by path for var_list, by substring for var_names.
    for name, adapted in [
        ("head_kernel", False),
        ("logits_kernel", False),
        ("k", True),
    ]:
        assert restored._is_adapted(keras.Variable(f32([[1.0]]), name=name)) is adapted


def test_get_config_from_config_round_trip():
    opt = _configured_lars()
    config = opt.get_config()
    assert config["weight_decay"] == 5e-4
    _check_same_lars(LARS.from_config(config), opt)


def test_serialize_json_deserialize_round_trip():
    opt = _configured_lars()
    blob = json.dumps(keras.saving.serialize_keras_object(opt))
    restored = keras.saving.deserialize_keras_object(json.loads(blob))
    _check_same_lars(restored, opt)
    assert keras.saving.get_registered_name(LARS) == "keras_largebatch>LARS"


def test_keras_file_save_load_continues_identically(tmp_path):
    x, y = fashion_mnist_test_split()
    model = small_dense_model()
    model.compile(
        optimizer=LARS(learning_rate=1.0, weight_decay=5e-4, trust_coefficient=0.01),
        loss=loss_fn(),
    )
    fit_steps(model, x, y, batch_size=32, steps=3)
    path = tmp_path / "lars_model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded.optimizer, LARS)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 3
    momentums = [m.numpy() for m in model.optimizer.momentums]
    assert any(np.abs(m).sum() > 0 for m in momentums)
    for m_loaded, m in zip(loaded.optimizer.momentums, momentums, strict=True):
        np.testing.assert_array_equal(m_loaded.numpy(), m)
    for name, ratio in model.optimizer.trust_ratios().items():
        assert loaded.optimizer.trust_ratios()[name].numpy() == ratio.numpy()

    x2, y2 = x[96:160], y[96:160]
    fit_steps(model, x2, y2, batch_size=32, steps=2)
    fit_steps(loaded, x2, y2, batch_size=32, steps=2)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------
# LossScaleOptimizer, XLA
# ----------------------------------------------------------------------------------


def _train_small(optimizer, *, jit_compile=False, steps=4, batch_size=32):
    x, y = fashion_mnist_test_split()
    model = small_dense_model(seed=3)
    model.compile(optimizer=optimizer, loss=loss_fn(), jit_compile=jit_compile)
    fit_steps(model, x, y, batch_size=batch_size, steps=steps)
    return model


def _lars(**kwargs):
    return LARS(learning_rate=1.0, momentum=0.9, weight_decay=5e-4, trust_coefficient=0.01,
                **kwargs)


def test_loss_scale_optimizer_matches_plain_lars_in_float32():
    plain = _train_small(_lars())
    wrapped_opt = keras.mixed_precision.LossScaleOptimizer(_lars())
    wrapped = _train_small(wrapped_opt)
    assert float(wrapped_opt.dynamic_scale.numpy()) == 2.0**15  # no skipped step
    assert int(wrapped_opt.inner_optimizer.iterations.numpy()) == 4
    start = small_dense_model(seed=3).get_weights()
    for a, b, w0 in zip(wrapped.get_weights(), plain.get_weights(), start, strict=True):
        assert not np.allclose(b, w0)
        assert_rel_close(a, b, 1e-6, "weights")


def test_jit_compile_matches_eager_graph():
    plain = _train_small(_lars(), jit_compile=False)
    xla = _train_small(_lars(), jit_compile=True)
    for a, b in zip(xla.get_weights(), plain.get_weights(), strict=True):
        assert_rel_close(a, b, 1e-5, "weights")


# ----------------------------------------------------------------------------------
# MirroredStrategy: norms on the all-reduced gradient
# ----------------------------------------------------------------------------------


def _train_cnn(strategy, *, loss_scale=False, steps=5, global_batch=64):
    x, y = fashion_mnist_test_split()
    with strategy.scope():
        keras.utils.set_random_seed(7)
        model = build_model(
            "cnn_fashion",
            input_shape=(28, 28, 1),
            num_classes=10,
            filters=(4, 8),
            dropout=0.0,
        )
        opt = LARS(learning_rate=2.0, momentum=0.9, weight_decay=5e-4)
        if loss_scale:
            opt = keras.mixed_precision.LossScaleOptimizer(opt)
        # Keras divides each replica's mean loss by the replica count: the gradient
        # all-reduced by the optimizer is that of sum(loss) / global_batch.
        model.compile(optimizer=opt, loss=loss_fn())
    fit_steps(model, x, y, batch_size=global_batch, steps=steps)
    return model


def test_mirrored_two_replicas_equal_one_device(two_cpu_strategy):
    reference = _train_cnn(tf.distribute.get_strategy())
    mirrored = _train_cnn(two_cpu_strategy)
    for a, b in zip(mirrored.get_weights(), reference.get_weights(), strict=True):
        assert_rel_close(a, b, 1e-5, "weights")
    ref_ratios = reference.optimizer.trust_ratios()
    for name, ratio in mirrored.optimizer.trust_ratios().items():
        per_replica = two_cpu_strategy.experimental_local_results(ratio.value)
        assert len(per_replica) == 2
        for value in per_replica:  # every replica computed the same local LR
            np.testing.assert_allclose(value.numpy(), ref_ratios[name].numpy(), rtol=1e-5)


def test_mirrored_loss_scale_optimizer_equals_one_device(two_cpu_strategy):
    reference = _train_cnn(tf.distribute.get_strategy(), steps=3)
    mirrored = _train_cnn(two_cpu_strategy, loss_scale=True, steps=3)
    for a, b in zip(mirrored.get_weights(), reference.get_weights(), strict=True):
        assert_rel_close(a, b, 1e-5, "weights")


# ----------------------------------------------------------------------------------
# TensorBoard callback
# ----------------------------------------------------------------------------------


def _read_events(log_dir):
    found = {}
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return found


def test_trust_ratio_logger_writes_scalars(tmp_path):
    logger = LarsTrustRatioLogger(str(tmp_path), every_n_batches=2)
    x, y = fashion_mnist_test_split()
    model = small_dense_model()
    # Only adapted variables are logged: exclude the biases (rank 1) explicitly.
    model.compile(optimizer=_lars(exclude_rank_1=True), loss=loss_fn())
    model.fit(x[:160], y[:160], batch_size=32, shuffle=False, verbose=0, callbacks=[logger])
    events = _read_events(tmp_path)
    assert sorted(events) == [
        "lars/trust_ratio/hidden/kernel",
        "lars/trust_ratio/logits/kernel",
    ]
    steps = [step for step, _ in events["lars/trust_ratio/hidden/kernel"]]
    assert steps == [1, 3, 5]  # after batches 1, 3 and 5 of 5
    last = events["lars/trust_ratio/logits/kernel"][-1][1]
    assert 0 < float(last) < 1  # eta = 0.01 times ||w|| / ||g||, never the 1.0 default


def test_trust_ratio_logger_histogram_for_many_layers(tmp_path):
    logger = LarsTrustRatioLogger(str(tmp_path), every_n_batches=10, histogram_above=1)
    x, y = fashion_mnist_test_split()
    model = small_dense_model()
    model.compile(optimizer=keras.mixed_precision.LossScaleOptimizer(_lars()), loss=loss_fn())
    model.fit(x[:64], y[:64], batch_size=32, shuffle=False, verbose=0, callbacks=[logger])
    events = _read_events(tmp_path)
    assert list(events) == ["lars/trust_ratio"]
    assert [step for step, _ in events["lars/trust_ratio"]] == [1]


def test_trust_ratio_logger_rejects_other_optimizers(tmp_path):
    x, y = fashion_mnist_test_split()
    model = small_dense_model()
    model.compile(optimizer=keras.optimizers.SGD(), loss=loss_fn())
    with pytest.raises(ValueError, match="needs a model compiled with LARS"):
        model.fit(
            x[:32],
            y[:32],
            verbose=0,
            callbacks=[LarsTrustRatioLogger(str(tmp_path))],
        )


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(learning_rate=-1.0), "`learning_rate` .* Received: learning_rate=-1.0"),
        (dict(learning_rate=float("nan")), "Received: learning_rate=nan"),
        (dict(learning_rate=float("inf")), "Received: learning_rate=inf"),
        (dict(momentum=1.5), r"`momentum` must be in \[0, 1\). Received: momentum=1.5"),
        (dict(momentum=1.0), "Received: momentum=1.0"),
        (dict(momentum=-0.1), "Received: momentum=-0.1"),
        (dict(weight_decay=-1e-4), "`weight_decay` .* Received: weight_decay=-0.0001"),
        (dict(weight_decay=float("nan")), "Received: weight_decay=nan"),
        (dict(trust_coefficient=0.0), "`trust_coefficient` .* trust_coefficient=0.0"),
        (dict(trust_coefficient=-0.001), "Received: trust_coefficient=-0.001"),
        (dict(epsilon=-1e-9), "`epsilon` .* Received: epsilon=-1e-09"),
        (dict(trust_ratio_form="mg"), "`trust_ratio_form` .* trust_ratio_form='mg'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LARS(**kwargs)


def test_exclusion_after_build_raises():
    opt = _lars()
    w = keras.Variable(f32([[1.0]]), name="k")
    opt.apply_gradients([(f32([[1.0]]), w)])
    with pytest.raises(ValueError, match="before the optimizer is built"):
        opt.exclude_from_layer_adaptation(var_names=["k"])


def test_setting_keras_decoupled_weight_decay_raises():
    opt = _lars()
    opt.weight_decay = 1e-4
    w = keras.Variable(f32([[1.0]]), name="k")
    with pytest.raises(ValueError, match="optimizer.weight_decay=0.0001"):
        opt.apply_gradients([(f32([[1.0]]), w)])
    assert w.numpy() == 1.0  # nothing applied


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(every_n_batches=0), "every_n_batches=0"),
        (dict(histogram_above=-1), "histogram_above=-1"),
    ],
)
def test_logger_bad_arguments(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        LarsTrustRatioLogger(str(tmp_path), **kwargs)
