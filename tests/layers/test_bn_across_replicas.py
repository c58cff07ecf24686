"""BN statistics across replicas (models/norm.py `bn_synchronized`): after a few real training
steps on two replicas (custom step through `strategy.run`), the replicas' copies of the moving
mean / variance are read one by one with `experimental_local_results`.

- Keras BN, unsynchronised (the default): the copies differ - the problem being fixed;
- Keras BN with synchronized=True and ghost BN with sync_moving_statistics=True: equal;
- synchronised ghost BN still normalises each replica's own ghost batches (NumPy reference),
  and its moving statistics are the mean over replicas of Composer's per-replica update.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.layers import GhostBatchNormalization
from keras_largebatch.models.norm import _batch_norm
from tests.layers.test_ghost_batch_norm import built_layer, composer_moving, numpy_ghost

PER_REPLICA, STEPS = 8, 3


def _replica_data(step, replica):
    """Replica 1's images have another mean and scale, so unsynchronised statistics split."""
    rng = np.random.RandomState(100 * step + replica)
    x = rng.randn(PER_REPLICA, 5, 5, 2).astype("float32") * (1 + 2 * replica) + 3 * replica
    return x, rng.randint(0, 3, PER_REPLICA).astype("int32")


def _train(strategy, bn_batch_size, synchronized):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5, 5, 2))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = _batch_norm(bn_batch_size, "bn", synchronized, momentum=0.5)(x)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
        model = keras.Model(inputs, keras.layers.Dense(3)(x))
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True)) / strategy.num_replicas_in_sync
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    @tf.function
    def step(images, labels):
        strategy.run(replica_step, args=(images, labels))

    for s in range(STEPS):
        batch = [strategy.experimental_distribute_values_from_function(
            lambda ctx, i=i, s=s: tf.constant(_replica_data(s, ctx.replica_id_in_sync_group)[i]))
            for i in (0, 1)]
        step(*batch)
    bn = model.get_layer("bn")
    copies = [[v.numpy() for v in strategy.experimental_local_results(var.value)]
              for var in (bn.moving_mean, bn.moving_variance)]
    assert [len(c) for c in copies] == [2, 2]  # one copy per replica
    return copies


def test_unsynchronised_keras_bn_copies_drift_apart(two_cpu_strategy):
    for copies in _train(two_cpu_strategy, None, False):
        assert not np.allclose(copies[0], copies[1], rtol=1e-3)


@pytest.mark.parametrize("bn_batch_size", [None, 4, 8])  # Keras BN; 2 ghost groups; 1 group
def test_synchronised_copies_are_equal(two_cpu_strategy, bn_batch_size):
    for copies in _train(two_cpu_strategy, bn_batch_size, True):
        np.testing.assert_array_equal(copies[0], copies[1])
        assert np.all(np.isfinite(copies[0]))


def test_synchronised_ghost_bn_normalises_per_replica_and_averages_moving_stats(
        two_cpu_strategy):
    strategy, momentum = two_cpu_strategy, 0.75
    xs = [_replica_data(7, r)[0] for r in range(2)]
    with strategy.scope():
        layer = built_layer((PER_REPLICA, 5, 5, 2), virtual_batch_size=4, momentum=momentum,
                            sync_moving_statistics=True)
    gamma, beta = layer.gamma.numpy(), layer.beta.numpy()
    old_mean, old_var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    shards = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(xs[ctx.replica_id_in_sync_group]))
    outputs = strategy.experimental_local_results(tf.function(
        lambda t: strategy.run(lambda u: layer(u, training=True), args=(t,)))(shards))
    means, variances = [], []
    for r, y in enumerate(outputs):
        expected, m, v = numpy_ghost(xs[r], 4, gamma, beta)
        np.testing.assert_allclose(y.numpy(), expected, atol=2e-5)  # own ghost batches
        means.append(composer_moving(old_mean, m, momentum))
        variances.append(composer_moving(old_var, v, momentum))
    for var, per_replica in ((layer.moving_mean, means), (layer.moving_variance, variances)):
        for copy in strategy.experimental_local_results(var.value):
            np.testing.assert_allclose(copy.numpy(), np.mean(per_replica, axis=0), rtol=1e-5)


def test_one_replica_and_no_strategy_are_unchanged():
    x = _replica_data(0, 1)[0]
    plain = built_layer(x.shape, virtual_batch_size=4)
    synced = built_layer(x.shape, virtual_batch_size=4, sync_moving_statistics=True)
    np.testing.assert_array_equal(synced(x, training=True).numpy(),
                                  plain(x, training=True).numpy())
    np.testing.assert_array_equal(synced.moving_mean.numpy(), plain.moving_mean.numpy())
    assert synced.get_config()["sync_moving_statistics"] is True
    assert GhostBatchNormalization.from_config(synced.get_config()).sync_moving_statistics


def test_factory_maps_the_option_and_checks_it():
    assert _batch_norm(None, "a", True).synchronized
    ghost = _batch_norm(4, "b", True)
    assert ghost.sync_moving_statistics and not ghost.synchronized
    assert not _batch_norm(4, "c").sync_moving_statistics
    with pytest.raises(UserInputError, match="bn_synchronized='yes' must be True or False"):
        _batch_norm(None, "d", "yes")
