"""Keras' BatchNormalization checks (batch_normalization_test.py) for GhostBatchNormalization.

Backend-neutral: run here and, from test_backends.py, under JAX and PyTorch. The layer checks
use Keras' own harness, `keras.src.testing.TestCase.run_layer_test` (weights, serialization,
masking support, a training run, mixed precision).

A Keras check that cannot apply by design: with ghosting, the training-mode output of a batch
is not the inference-mode output once the moving statistics have converged on that batch,
because the moving statistics estimate *virtual-batch* statistics (averaged over groups),
while each group is normalised with its own; `test_training_equals_inference_only_without_
ghosting` shows both sides.
"""

import keras
import numpy as np
import pytest
from keras import ops
from keras.src import testing

import keras_largebatch  # noqa: F401  (registers the layer for keras.saving)
from keras_largebatch.layers import GhostBatchNormalization


def numpy_of(x):
    return ops.convert_to_numpy(x)


# Keras' own harness fits on a generator with shuffle=True and warns about it.
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")
class GhostBatchNormLayerTest(testing.TestCase):
    def _basics(self, init_kwargs, input_shape):
        self.run_layer_test(
            GhostBatchNormalization,
            init_kwargs=init_kwargs,
            input_shape=input_shape,
            expected_output_shape=input_shape,
            expected_num_trainable_weights=int(init_kwargs.get("center", True))
            + int(init_kwargs.get("scale", True)),
            expected_num_non_trainable_weights=2,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=True,
        )

    def test_basics_channels_last(self):
        self._basics({"virtual_batch_size": 2, "center": True, "scale": True}, (4, 3))

    def test_basics_channels_first_no_center(self):
        self._basics({"virtual_batch_size": 2, "axis": 1, "center": False}, (4, 3, 5))

    def test_basics_without_ghosting(self):
        self._basics({"virtual_batch_size": None, "momentum": 0.9}, (2, 4, 4, 3))

    def test_basics_remainder_batch(self):
        self._basics({"virtual_batch_size": 3}, (7, 4))


@pytest.mark.parametrize("axis, shape", [(-1, (200, 4, 4, 3)), (1, (200, 3, 4, 4))])
def test_correctness(axis, shape):
    # batch_normalization_test.test_correctness: every group is normalised to mean 0, std 1.
    layer = GhostBatchNormalization(virtual_batch_size=50, axis=axis, momentum=0.8,
                                    epsilon=1e-7)
    x = np.random.RandomState(0).normal(loc=5.0, scale=10.0, size=shape).astype("float32")
    for _ in range(10):
        out = numpy_of(layer(x, training=True))
    feature = axis % len(shape)
    bshape = [1] * len(shape)
    bshape[feature] = -1
    out = (out - numpy_of(layer.beta).reshape(bshape)) / numpy_of(layer.gamma).reshape(bshape)
    reduce = tuple(a for a in range(1, len(shape)) if a != feature)
    for group in np.split(out, 4):
        np.testing.assert_allclose(group.mean(axis=(0,) + reduce), 0.0, atol=1e-3)
        np.testing.assert_allclose(group.std(axis=(0,) + reduce), 1.0, atol=1e-3)
    # Moving statistics converge towards the data's mean and variance.
    np.testing.assert_allclose(numpy_of(layer.moving_mean), 5.0, atol=1.5)
    np.testing.assert_allclose(numpy_of(layer.moving_variance), 100.0, rtol=0.25)


def test_trainable_false_uses_moving_statistics_and_does_not_update():
    # batch_normalization_test.test_trainable_behavior
    layer = GhostBatchNormalization(virtual_batch_size=4, momentum=0.5)
    x = np.random.RandomState(1).normal(5.0, 2.0, (8, 3)).astype("float32")
    layer.build(x.shape)
    layer.trainable = False
    out = numpy_of(layer(x, training=True))
    np.testing.assert_allclose(out, numpy_of(layer(x, training=False)), atol=1e-6)
    np.testing.assert_array_equal(numpy_of(layer.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(numpy_of(layer.moving_variance), np.ones(3))


def test_moving_statistics_are_updated_in_training_only():
    layer = GhostBatchNormalization(virtual_batch_size=4, momentum=0.5)
    x = np.random.RandomState(2).normal(3.0, 1.0, (8, 3)).astype("float32")
    layer(x, training=False)
    np.testing.assert_array_equal(numpy_of(layer.moving_mean), np.zeros(3))
    layer(x, training=True)
    assert np.all(numpy_of(layer.moving_mean) > 0.5)


@pytest.mark.parametrize("batch", [8, 10])
def test_masked_positions_do_not_change_the_output(batch):
    # batch_normalization_test.test_masking_correctness, per virtual batch.
    rng = np.random.RandomState(3)
    x = rng.normal(size=(batch, 6, 2)).astype("float32")
    mask = rng.rand(batch, 6) > 0.3
    mask[:, 0] = True
    junk = x.copy()
    junk[~mask] = 1e3
    layer_a = GhostBatchNormalization(virtual_batch_size=4)
    layer_b = GhostBatchNormalization(virtual_batch_size=4)
    out_a = numpy_of(layer_a(x, training=True, mask=mask))
    out_b = numpy_of(layer_b(junk, training=True, mask=mask))
    np.testing.assert_allclose(out_a[mask], out_b[mask], atol=1e-5)
    np.testing.assert_allclose(numpy_of(layer_a.moving_mean), numpy_of(layer_b.moving_mean),
                               atol=1e-6)


@pytest.mark.parametrize("policy, dtype", [("mixed_float16", "float16"),
                                           ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_policies(policy, dtype):
    # batch_normalization_test: float32 variables and statistics, low-precision output.
    x = np.random.RandomState(4).normal(2.0, 3.0, (8, 5)).astype("float32")
    layer = GhostBatchNormalization(virtual_batch_size=4, dtype=policy)
    reference = GhostBatchNormalization(virtual_batch_size=4)
    out = layer(ops.cast(x, dtype), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert keras.backend.standardize_dtype(layer.moving_mean.dtype) == "float32"
    expected = numpy_of(reference(ops.cast(ops.cast(x, dtype), "float32"), training=True))
    tol = 2e-2 if dtype == "bfloat16" else 3e-3
    np.testing.assert_allclose(numpy_of(ops.cast(out, "float32")), expected, atol=tol * 4)
    np.testing.assert_allclose(numpy_of(layer.moving_mean), numpy_of(reference.moving_mean),
                               atol=tol)


def test_training_equals_inference_only_without_ghosting():
    # Keras' BN: after momentum=0 training on a batch, inference on it equals training mode.
    x = np.random.RandomState(5).normal(0.0, 1.0, (8, 3)).astype("float32")
    for vbs, equal in ((8, True), (4, False)):
        layer = GhostBatchNormalization(virtual_batch_size=vbs, momentum=0.0)
        train = numpy_of(layer(x, training=True))
        infer = numpy_of(layer(x, training=False))
        assert np.allclose(train, infer, atol=1e-2) == equal, vbs


def test_serialization_in_a_model(tmp_path):
    inputs = keras.Input((4,))
    outputs = GhostBatchNormalization(virtual_batch_size=2, momentum=0.9, name="g")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.RandomState(6).rand(6, 4).astype("float32")
    model.fit(x, x, batch_size=6, epochs=1, verbose=0)
    path = str(tmp_path / "g.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("g")
    assert isinstance(layer, GhostBatchNormalization) and layer.virtual_batch_size == 2
    np.testing.assert_allclose(numpy_of(loaded(x)), numpy_of(model(x)), atol=1e-6)


def numpy_group_moments(x, mask, vbs):
    """Per group of `vbs` consecutive samples (the last one smaller): Keras' (masked) moments
    over every axis but the last, in float64."""
    means, variances = [], []
    for start in range(0, len(x), vbs):
        chunk = x[start:start + vbs].astype("float64")
        w = np.ones(chunk.shape[:-1]) if mask is None else mask[start:start + vbs]
        w = w.astype("float64")[..., None] * np.ones_like(chunk)
        axes = tuple(range(chunk.ndim - 1))
        eps = 0.0 if mask is None else keras.backend.epsilon()
        mean = (w * chunk).sum(axes) / (w.sum(axes) + eps)
        means.append(mean)
        variances.append((w * (chunk - mean) ** 2).sum(axes) / (w.sum(axes) + eps))
    return means, variances


def numpy_moving_after_fit(x, mask, batch, vbs, momentum, epochs):
    """Moving statistics of a ghost layer that sees the inputs themselves: per batch (the last
    one smaller), Composer's rule over its groups; one group is Keras BN's own update."""
    mean, var = np.zeros(x.shape[-1]), np.ones(x.shape[-1])
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            b = slice(start, start + batch)
            means, variances = numpy_group_moments(x[b], None if mask is None else mask[b], vbs)
            a = (1 - momentum) / len(means)
            for m, v in zip(means, variances):
                mean, var = mean * (1 - a) + m * a, var * (1 - a) + v * a
    return mean, var


@pytest.mark.parametrize("masked", [False, True])
def test_model_fit_compiled_equals_uncompiled_and_numpy(masked):
    # Issue 28: ghost BN under model.fit(jit_compile=True) (XLA on TensorFlow; JAX always
    # jits), with batches of 6, 6, 6 and a remainder of 4 (groups of 3: 3 + 1) and a mask
    # from a Masking layer. Same weights as without compilation; moving statistics as NumPy.
    rng = np.random.RandomState(8)
    x = rng.normal(1.0, 2.0, (22, 5, 3)).astype("float32")
    mask = None
    if masked:
        mask = rng.rand(22, 5) > 0.3
        mask[:, 0] = True
        x[~mask] = 0.0
    y = rng.normal(size=(22, 1)).astype("float32")
    modes = [False] if keras.backend.backend() == "torch" else [False, True]
    weights = {}
    for jit in modes:
        keras.utils.set_random_seed(1)
        inputs = keras.Input((5, 3))
        h = keras.layers.Masking(0.0)(inputs) if masked else inputs
        h = GhostBatchNormalization(virtual_batch_size=3, momentum=0.8, name="g")(h)
        h = keras.layers.GlobalAveragePooling1D()(h)
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit)
        model.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0)
        weights[jit] = [numpy_of(w) for w in model.weights]
        layer = model.get_layer("g")
        mean, var = numpy_moving_after_fit(x, mask, 6, 3, 0.8, epochs=2)
        np.testing.assert_allclose(numpy_of(layer.moving_mean), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(numpy_of(layer.moving_variance), var, rtol=1e-5, atol=1e-5)
    for a, b in zip(weights[modes[0]], weights[modes[-1]]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
