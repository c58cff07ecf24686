"""GhostBatchNormalization against per-chunk BN computed in NumPy and by Keras' BN layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.layers import GhostBatchNormalization

EPS = 1e-3


def data(shape, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(*shape) * 2.0 + 0.5).astype("float32")


def numpy_ghost(x, vbs, gamma, beta, axis=-1, eps=EPS):
    """Per-chunk BN in NumPy: each group of `vbs` samples with its own mean / biased variance."""
    feature = axis % x.ndim
    reduce = tuple(a for a in range(x.ndim) if a != feature)
    shape = [1] * x.ndim
    shape[feature] = -1
    out, means, variances = [], [], []
    # Groups of `vbs` consecutive samples; the last one holds the remainder (fewer samples).
    for chunk in np.split(x.astype("float64"), range(vbs, x.shape[0], vbs)):
        m, v = chunk.mean(reduce), chunk.var(reduce)
        means.append(m)
        variances.append(v)
        normed = (chunk - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps)
        out.append(normed * gamma.reshape(shape) + beta.reshape(shape))
    return np.concatenate(out), means, variances


def composer_moving(old, stats, momentum):
    """Composer's GhostBatchNorm rule, written out as the loop it is: one BN update per chunk,
    in order, with the new-statistic weight (1 - momentum) divided by the number of chunks."""
    a = (1 - momentum) / len(stats)
    value = np.array(old, dtype="float64")
    for s in stats:
        value = value * (1 - a) + s * a
    return value


def built_layer(shape, **kwargs):
    layer = GhostBatchNormalization(**kwargs)
    layer.build(shape)
    channels = shape[layer.axis]
    rng = np.random.RandomState(1)
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
    layer.beta.assign(rng.uniform(-0.5, 0.5, channels).astype("float32"))
    layer.moving_mean.assign(rng.uniform(-1, 1, channels).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 2, channels).astype("float32"))
    return layer


@pytest.mark.parametrize("shape, vbs", [((32, 5, 5, 3), 8), ((12, 4), 3), ((16, 6, 2), 2)])
def test_training_output_and_moving_stats_match_numpy(shape, vbs):
    x = data(shape)
    layer = built_layer(shape, virtual_batch_size=vbs, momentum=0.9)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    old_mean, old_var = layer.moving_mean.numpy(), layer.moving_variance.numpy()

    y = layer(x, training=True).numpy()

    expected, means, variances = numpy_ghost(x, vbs, gamma, beta)
    np.testing.assert_allclose(y, expected, atol=2e-5)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), composer_moving(old_mean, means, 0.9), atol=1e-6
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), composer_moving(old_var, variances, 0.9), atol=1e-5
    )


def test_channels_first_axis():
    shape = (8, 3, 4, 4)
    x = data(shape)
    layer = built_layer(shape, virtual_batch_size=4, axis=1)
    y = layer(x, training=True).numpy()
    expected, _, _ = numpy_ghost(x, 4, layer.gamma.numpy(), layer.beta.numpy(), axis=1)
    np.testing.assert_allclose(y, expected, atol=2e-5)


def test_matches_keras_bn_applied_chunk_by_chunk_including_gradients():
    shape = (24, 3, 3, 4)
    x = tf.constant(data(shape))
    ghost = built_layer(shape, virtual_batch_size=6, momentum=0.99)
    bn = keras.layers.BatchNormalization(momentum=0.99)
    bn.build(shape)
    bn.set_weights(ghost.get_weights())
    upstream = tf.constant(data(shape, seed=3))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_ghost = ghost(x, training=True)
        y_bn = tf.concat([bn(c, training=True) for c in tf.split(x, 4)], axis=0)
        loss_ghost = tf.reduce_sum(y_ghost * upstream)
        loss_bn = tf.reduce_sum(y_bn * upstream)
    np.testing.assert_allclose(y_ghost.numpy(), y_bn.numpy(), atol=2e-5)
    for a, b in [
        (tape.gradient(loss_ghost, x), tape.gradient(loss_bn, x)),
        (tape.gradient(loss_ghost, ghost.gamma.value), tape.gradient(loss_bn, bn.gamma.value)),
        (tape.gradient(loss_ghost, ghost.beta.value), tape.gradient(loss_bn, bn.beta.value)),
    ]:
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("vbs", [None, 32, 64])
def test_exactly_batchnorm_when_not_ghosting(vbs):
    shape = (32, 4, 4, 3)
    x = data(shape)
    ghost = built_layer(shape, virtual_batch_size=vbs, momentum=0.9)
    bn = keras.layers.BatchNormalization(momentum=0.9)
    bn.build(shape)
    bn.set_weights(ghost.get_weights())
    np.testing.assert_array_equal(ghost(x, training=True).numpy(), bn(x, training=True).numpy())
    for a, b in zip(ghost.get_weights(), bn.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ghost(x, training=False).numpy(), bn(x, training=False).numpy())


def test_inference_uses_moving_statistics_like_batchnorm():
    shape = (16, 5)
    x = data(shape)
    layer = built_layer(shape, virtual_batch_size=4)
    for _ in range(3):
        layer(x, training=True)
    mm, mv = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    expected = (x - mm) / np.sqrt(mv + EPS) * layer.gamma.numpy() + layer.beta.numpy()
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected, atol=1e-5)


def test_dynamic_batch_one_trace_for_all_batch_sizes():
    shape = (32, 3, 3, 2)
    x = data(shape)
    layer = built_layer(shape, virtual_batch_size=4, momentum=0.5)
    bn = keras.layers.BatchNormalization(momentum=0.5)
    bn.build(shape)

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 3, 2], tf.float32)])
    def train(inputs):
        return layer(inputs, training=True)

    for batch in (32, 8, 4, 3):  # 8 groups, 2 groups, then plain BN (batch <= 4)
        bn.set_weights(layer.get_weights())
        y = train(x[:batch]).numpy()
        if batch > 4:
            expected, _, _ = numpy_ghost(x[:batch], 4, layer.gamma.numpy(), layer.beta.numpy())
            np.testing.assert_allclose(y, expected, atol=2e-5)
        else:
            np.testing.assert_array_equal(y, bn(x[:batch], training=True).numpy())
            np.testing.assert_array_equal(layer.moving_mean.numpy(), bn.moving_mean.numpy())
    # Issue 2: a remainder batch (10 = 4 + 4 + 2) trains with a smaller last virtual batch,
    # in the same trace (before, an InvalidArgumentError).
    old_mean = layer.moving_mean.numpy().copy()
    y = train(x[:10]).numpy()
    expected, means, _ = numpy_ghost(x[:10], 4, layer.gamma.numpy(), layer.beta.numpy())
    np.testing.assert_allclose(y, expected, atol=2e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), composer_moving(old_mean, means, 0.5),
                               rtol=1e-5, atol=1e-6)
    assert train.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("batch, vbs", [(10, 4), (7, 3), (5, 4)])
def test_batch_not_a_multiple_has_a_smaller_last_virtual_batch(batch, vbs):
    # The rule: groups of vbs consecutive samples, the last one of batch mod vbs samples;
    # moving statistics updated once per group (Composer's rule with n = ceil(batch / vbs)).
    shape = (batch, 3, 2)
    x = data(shape, seed=3)
    layer = built_layer(shape, virtual_batch_size=vbs, momentum=0.8)
    old_mean, old_var = layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()
    y = np.asarray(layer(x, training=True))
    expected, means, variances = numpy_ghost(x, vbs, layer.gamma.numpy(), layer.beta.numpy())
    assert len(means) == -(-batch // vbs)
    np.testing.assert_allclose(y, expected, atol=2e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), composer_moving(old_mean, means, 0.8),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               composer_moving(old_var, variances, 0.8), rtol=1e-5, atol=1e-6)


def test_model_fit_with_a_remainder_batch():
    # Issue 2: 20 samples in batches of 8 (8, 8, 4) under plain model.fit.
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(GhostBatchNormalization(virtual_batch_size=4)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(data((20, 3)), data((20, 1), seed=1), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_under_mirrored_strategy_each_replica_ghosts_its_own_batch(two_cpu_strategy):
    strategy = two_cpu_strategy
    shape = (16, 3, 3, 2)  # global batch 16 -> 8 per replica -> 2 groups of 4 each
    x = data(shape)
    with strategy.scope():
        layer = built_layer((8, 3, 3, 2), virtual_batch_size=4)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    shards = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[ctx.replica_id_in_sync_group * 8 :][:8])
    )

    @tf.function
    def run(inputs):
        return strategy.run(lambda t: layer(t, training=True), args=(inputs,))

    outputs = strategy.experimental_local_results(run(shards))
    for r, y in enumerate(outputs):
        expected, _, _ = numpy_ghost(x[r * 8 : (r + 1) * 8], 4, gamma, beta)
        np.testing.assert_allclose(y.numpy(), expected, atol=2e-5)


def test_in_a_model_serialization_round_trip(tmp_path):
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = GhostBatchNormalization(virtual_batch_size=8, momentum=0.95, name="gbn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model(data((16, 6, 6, 2)), training=True)
    path = tmp_path / "ghost.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("gbn")
    assert isinstance(layer, GhostBatchNormalization)
    assert layer.virtual_batch_size == 8 and layer.momentum == pytest.approx(0.95)
    probe = data((16, 6, 6, 2), seed=5)
    np.testing.assert_allclose(loaded(probe).numpy(), model(probe).numpy(), atol=1e-6)
    config = GhostBatchNormalization(virtual_batch_size=4, epsilon=0.01).get_config()
    clone = GhostBatchNormalization.from_config(config)
    assert clone.virtual_batch_size == 4 and clone.epsilon == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"virtual_batch_size": 0}, "virtual_batch_size=0"),
        ({"virtual_batch_size": -8}, "virtual_batch_size=-8"),
        ({"virtual_batch_size": 2.5}, "virtual_batch_size=2.5"),
        ({"virtual_batch_size": True}, "virtual_batch_size=True"),
        ({"virtual_batch_size": 4, "synchronized": True}, "virtual_batch_size=4"),
        ({"virtual_batch_size": 4, "renorm": True}, "virtual_batch_size=4"),
    ],
)
def test_bad_arguments(kwargs, needle):
    with pytest.raises(UserInputError) as info:
        GhostBatchNormalization(**kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_feature_axis_on_the_batch_axis_is_rejected():
    with pytest.raises(UserInputError, match="axis=0"):
        GhostBatchNormalization(virtual_batch_size=4, axis=0)(data((8, 3)), training=True)


def numpy_masked_ghost(x, mask, vbs, gamma, beta, eps=EPS):
    """Keras' masked moments (weights = mask, + keras epsilon) per group of vbs samples."""
    out, means, variances = [], [], []
    for start in range(0, x.shape[0], vbs):
        chunk = x[start:start + vbs].astype("float64")
        w = mask[start:start + vbs].astype("float64")[..., None] * np.ones_like(chunk)
        axes = tuple(range(chunk.ndim - 1))
        m = (w * chunk).sum(axes) / (w.sum(axes) + keras.backend.epsilon())
        v = (w * (chunk - m) ** 2).sum(axes) / (w.sum(axes) + keras.backend.epsilon())
        means.append(m)
        variances.append(v)
        out.append((chunk - m) / np.sqrt(v + eps) * gamma + beta)
    return np.concatenate(out), means, variances


@pytest.mark.parametrize("batch, vbs", [(8, 4), (10, 4), (3, 4)])
def test_masks_are_honoured_like_keras_batchnorm(batch, vbs):
    # Issue 2: masked positions are excluded from the moments of their virtual batch.
    shape = (batch, 5, 2)
    x = data(shape, seed=5)
    mask = np.random.RandomState(2).rand(batch, 5) > 0.4
    mask[:, 0] = True
    layer = built_layer(shape, virtual_batch_size=vbs, momentum=0.9)
    old_mean = layer.moving_mean.numpy().copy()
    y = np.asarray(layer(x, training=True, mask=mask))
    expected, means, _ = numpy_masked_ghost(x, mask, vbs, layer.gamma.numpy(),
                                            layer.beta.numpy())
    np.testing.assert_allclose(y, expected, atol=3e-5)
    if batch <= vbs:  # one group: exactly Keras' BatchNormalization with the same mask
        bn = keras.layers.BatchNormalization(momentum=0.9)
        bn.build(shape)
        bn.set_weights([layer.gamma.numpy(), layer.beta.numpy(), old_mean,
                        np.ones(2, "float32")])
        np.testing.assert_allclose(y, np.asarray(bn(x, training=True, mask=mask)), atol=1e-6)
    else:
        np.testing.assert_allclose(layer.moving_mean.numpy(),
                                   composer_moving(old_mean, means, 0.9), rtol=1e-5, atol=1e-6)


def keras_bn_by_chunk(layer, x, upstream, vbs, mask=None):
    """Output and gradients (x, gamma, beta) of Keras' BatchNormalization applied to each group
    of `vbs` consecutive samples on its own (the last group smaller), in eager TensorFlow."""
    bn = keras.layers.BatchNormalization(momentum=layer.momentum, epsilon=layer.epsilon)
    bn.build(x.shape)
    bn.set_weights(layer.get_weights())
    x = tf.constant(x)
    sizes = [min(vbs, x.shape[0] - s) for s in range(0, x.shape[0], vbs)]
    with tf.GradientTape() as tape:
        tape.watch(x)
        masks = [None] * len(sizes) if mask is None else tf.split(mask, sizes)
        y = tf.concat([bn(c, training=True, mask=m)
                       for c, m in zip(tf.split(x, sizes), masks)], axis=0)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [x, bn.gamma.value, bn.beta.value])
    return y.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("masked", [False, True])
def test_xla_with_a_dynamic_batch_equals_graph_mode_numpy_and_keras_bn(masked):
    # Issue 28: SegmentSum had no XLA kernel. One XLA-compiled function (None batch dim)
    # serves a multiple of v, a remainder, a batch smaller than v and one equal to v; output,
    # gradients and moving statistics equal graph mode and the references.
    full = data((10, 5, 2), seed=11)
    full_mask = np.random.RandomState(4).rand(10, 5) > 0.35
    full_mask[:, 0] = True
    upstream_full = data((10, 5, 2), seed=12)
    spec = [tf.TensorSpec([None, 5, 2], tf.float32), tf.TensorSpec([None, 5], tf.bool),
            tf.TensorSpec([None, 5, 2], tf.float32)]
    layers, steps = {}, {}
    for jit in (False, True):
        layers[jit] = layer = built_layer((10, 5, 2), virtual_batch_size=4, momentum=0.8)

        def step(t, m, upstream, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = layer(t, training=True, mask=m if masked else None)
                loss = tf.reduce_sum(y * upstream)
            return y, tape.gradient(loss, [t, layer.gamma.value, layer.beta.value])

        steps[jit] = tf.function(step, jit_compile=jit, input_signature=spec)
    for batch in (10, 8, 3, 4):
        x, mask, upstream = full[:batch], full_mask[:batch], upstream_full[:batch]
        old_mean = layers[True].moving_mean.numpy().copy()
        old_var = layers[True].moving_variance.numpy().copy()
        ref_y, ref_grads = keras_bn_by_chunk(layers[True], x, upstream, 4,
                                             mask if masked else None)
        outputs = {jit: steps[jit](x, mask, upstream) for jit in (False, True)}
        y_xla, grads_xla = outputs[True]
        np.testing.assert_allclose(y_xla.numpy(), outputs[False][0].numpy(), atol=1e-5)
        for a, b in zip(grads_xla, outputs[False][1]):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layers[True].moving_mean.numpy(),
                                   layers[False].moving_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(layers[True].moving_variance.numpy(),
                                   layers[False].moving_variance.numpy(), atol=1e-6)
        gamma, beta = layers[True].gamma.numpy(), layers[True].beta.numpy()
        if masked:
            expected, means, variances = numpy_masked_ghost(x, mask, 4, gamma, beta)
        else:
            expected, means, variances = numpy_ghost(x, 4, gamma, beta)
        np.testing.assert_allclose(y_xla.numpy(), expected, atol=3e-5)
        np.testing.assert_allclose(y_xla.numpy(), ref_y, atol=3e-5)
        for a, b in zip(grads_xla, ref_grads):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-4, atol=1e-4)
        if batch > 4:  # one group (batch <= v) is Keras BN's own update, tested above
            np.testing.assert_allclose(layers[True].moving_mean.numpy(),
                                       composer_moving(old_mean, means, 0.8), atol=1e-5)
            np.testing.assert_allclose(layers[True].moving_variance.numpy(),
                                       composer_moving(old_var, variances, 0.8), atol=1e-5)
    assert all(s.experimental_get_tracing_count() == 1 for s in steps.values())

