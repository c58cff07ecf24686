"""Gradient accumulation: equal to the direct step, one update per step, one trace."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.training.steps.accumulation import (
    MicroBatchPlan,
    accumulate_gradients,
    plan_micro_batches,
)

GLOBAL_BATCH = 16


def mse(y_true, y_pred):
    return tf.reduce_sum(tf.square(y_pred - y_true), axis=-1)


def xent():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def regression_data(seed=0):
    rng = np.random.RandomState(seed)
    x = rng.randn(GLOBAL_BATCH, 3).astype("float32")
    y = rng.randn(GLOBAL_BATCH, 1).astype("float32")
    return x, y


def linear_model(w0, b0):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([w0, b0])
    return model


def mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(
                16, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-2)
            ),
            keras.layers.Dense(4),
        ]
    )


def distributed_step(strategy, model, optimizer, loss_fn, max_micro_batch):
    """One optimizer update per call, gradients accumulated per replica as the loop would."""

    def replica_step(x, y):
        result = accumulate_gradients(
            model, loss_fn, x, y, max_micro_batch=max_micro_batch, optimizer=optimizer
        )
        optimizer.apply_gradients(zip(result.gradients, model.trainable_variables))
        return result.loss, result.num_micro_batches

    @tf.function
    def step(x, y):
        loss, n = strategy.run(replica_step, args=(x, y))
        return strategy.reduce("SUM", loss, axis=None), strategy.experimental_local_results(n)

    return step


def shard(strategy, array):
    per_replica = array.shape[0] // strategy.num_replicas_in_sync
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(array[ctx.replica_id_in_sync_group * per_replica :][:per_replica])
    )


def test_accumulated_sgd_step_matches_numpy_linear_regression(two_cpu_strategy):
    strategy = two_cpu_strategy
    x, y = regression_data()
    rng = np.random.RandomState(1)
    w0, b0 = rng.randn(3, 1).astype("float32"), rng.randn(1).astype("float32")
    with strategy.scope():
        model = linear_model(w0, b0)
        optimizer = keras.optimizers.SGD(learning_rate=0.1)
    step = distributed_step(strategy, model, optimizer, mse, max_micro_batch=2)
    loss, micro_counts = step(shard(strategy, x), shard(strategy, y))

    # NumPy: L = mean_i (x_i w + b - y_i)^2 over the global batch of 16.
    residual = x.astype("float64") @ w0 + b0 - y
    grad_w = 2 * x.T @ residual / GLOBAL_BATCH
    grad_b = 2 * residual.sum(0) / GLOBAL_BATCH
    np.testing.assert_allclose(float(loss), np.mean(residual**2), rtol=1e-5)
    w, b = model.layers[0].get_weights()
    np.testing.assert_allclose(w, w0 - 0.1 * grad_w, atol=1e-5)
    np.testing.assert_allclose(b, b0 - 0.1 * grad_b, atol=1e-5)
    assert [int(n) for n in micro_counts] == [4, 4]  # 8 per replica, micro-batches of 2


@pytest.mark.parametrize("max_micro_batch", [1, 2, 4, 8, None])
def test_accumulated_updates_match_direct_updates_over_several_steps(
    two_cpu_strategy, max_micro_batch
):
    strategy = two_cpu_strategy
    rng = np.random.RandomState(2)
    batches = [
        (rng.randn(GLOBAL_BATCH, 6).astype("float32"), rng.randint(0, 4, GLOBAL_BATCH))
        for _ in range(3)
    ]
    results = []
    for cap in (None, max_micro_batch):  # direct (one micro-batch) vs accumulated
        with strategy.scope():
            model = mlp(seed=7)
            optimizer = keras.optimizers.SGD(learning_rate=0.5, momentum=0.9)
            optimizer.build(model.trainable_variables)  # as the loop does, before tracing
        step = distributed_step(strategy, model, optimizer, xent(), cap)
        losses = [float(step(shard(strategy, x), shard(strategy, y))[0]) for x, y in batches]
        results.append((model.get_weights(), losses, int(optimizer.iterations.numpy())))
    (direct_w, direct_l, direct_it), (acc_w, acc_l, acc_it) = results
    for a, b in zip(direct_w, acc_w, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(direct_l, acc_l, rtol=1e-5)
    assert direct_it == acc_it == 3  # one optimizer update per step, accumulated or not


def test_one_trace_serves_every_batch_size_and_cap():
    model = mlp(seed=3)
    loss_fn = xent()

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 6], tf.float32),
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([], tf.int32),
        ]
    )
    def grads(x, y, cap):
        result = accumulate_gradients(model, loss_fn, x, y, max_micro_batch=cap)
        return result.gradients, result.per_example_loss, result.predictions

    rng = np.random.RandomState(4)
    for batch, cap in [(8, 8), (8, 2), (24, 8), (24, 7), (12, 4)]:
        x = rng.randn(batch, 6).astype("float32")
        y = rng.randint(0, 4, batch)
        g, per_example, predictions = grads(x, y, cap)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            direct = loss_fn(y, logits)
            loss = tf.reduce_sum(direct) / batch + tf.add_n(model.losses)
        expected = tape.gradient(loss, model.trainable_variables)
        for a, b in zip(g, expected, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
        np.testing.assert_allclose(per_example.numpy(), direct.numpy(), rtol=1e-5)
        np.testing.assert_allclose(predictions.numpy(), logits.numpy(), atol=1e-5)
    assert grads.experimental_get_tracing_count() == 1


def test_unequal_split_fails_in_graph_naming_the_sizes():
    model = mlp(seed=3)

    @tf.function(input_signature=[tf.TensorSpec([None, 6]), tf.TensorSpec([None], tf.int64)])
    def grads(x, y):
        return accumulate_gradients(model, xent(), x, y, max_micro_batch=4).gradients

    with pytest.raises(tf.errors.InvalidArgumentError, match="does not split into") as info:
        grads(np.zeros([10, 6], "float32"), np.zeros([10], "int64"))  # 3 micro-batches of 10/3
    assert "[10]" in str(info.value)


def test_plan_micro_batches():
    assert plan_micro_batches(512, 128) == MicroBatchPlan(4, 128)
    assert plan_micro_batches(100, 64) == MicroBatchPlan(2, 50)
    assert plan_micro_batches(64, 128) == MicroBatchPlan(1, 64)
    assert plan_micro_batches(64, None) == MicroBatchPlan(1, 64)


@pytest.mark.parametrize(
    "args, needle",
    [
        ((1000, 400), "per-replica batch 1000 does not split into 3"),
        ((0, 4), "per_replica_batch=0"),
        ((64, 0), "max_micro_batch=0"),
        ((64, 2.5), "max_micro_batch=2.5"),
    ],
)
def test_plan_micro_batches_bad_input(args, needle):
    with pytest.raises(UserInputError) as info:
        plan_micro_batches(*args)
    assert needle in str(info.value) and "\n" not in str(info.value)


def lr_probe():
    """A float64 weight with gradient exactly 1 per update: SGD moves it by -lr."""
    w = keras.Variable(np.zeros([1]), dtype="float64")
    return w, lambda: tf.reduce_sum(w.value)


def test_schedules_advance_per_update_not_per_micro_batch():
    # The user's schedule: LR 1.0 for the first 2 updates, then 0.1.
    schedule = lambda: keras.optimizers.schedules.PiecewiseConstantDecay([1], [1.0, 0.1])  # noqa: E731

    # This framework: 4 micro-batches accumulated into each update, one apply per update.
    model = keras.Sequential([keras.Input((1,), dtype="float64")])
    model.add(keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", dtype="float64"))
    optimizer = keras.optimizers.SGD(learning_rate=schedule())
    kernel = model.layers[0].kernel

    @tf.function
    def step(x):
        result = accumulate_gradients(
            model, lambda y_true, y_pred: y_pred[:, 0], x, x, max_micro_batch=2, global_batch_size=8
        )
        optimizer.apply_gradients(zip(result.gradients, model.trainable_variables))

    ours = []
    for _ in range(3):
        before = float(kernel.numpy()[0, 0])
        step(tf.ones([8, 1], tf.float64))
        ours.append(before - float(kernel.numpy()[0, 0]))
    assert ours == pytest.approx([1.0, 1.0, 0.1])
    assert int(optimizer.iterations) == 3

    # Keras 3's built-in accumulation (4 micro-steps per update) calls the schedule with its
    # micro-step counter: the first update already runs at 0.1 (schedule step 3 > 1).
    w, loss = lr_probe()
    builtin = keras.optimizers.SGD(learning_rate=schedule(), gradient_accumulation_steps=4)
    builtin.build([w])
    keras_lrs = []
    for _ in range(3):
        before = float(w.numpy()[0])
        for _ in range(4):
            with tf.GradientTape() as tape:
                value = loss()
            builtin.apply_gradients([(tape.gradient(value, w.value), w)])
        keras_lrs.append(before - float(w.numpy()[0]))
    assert keras_lrs == pytest.approx([0.1, 0.1, 0.1])
    assert int(builtin.iterations) == 3  # the public counter hides the micro-steps


def test_ghost_bn_makes_accumulation_exact_with_batch_norm(two_cpu_strategy):
    # With BN groups no larger than the micro-batch, the groups (and so the gradients) are the
    # same whether the per-replica batch of 8 runs whole or as 2 micro-batches of 4.
    from keras_largebatch.layers import GhostBatchNormalization

    strategy = two_cpu_strategy
    rng = np.random.RandomState(5)
    x, y = rng.randn(GLOBAL_BATCH, 6).astype("float32"), rng.randint(0, 4, GLOBAL_BATCH)
    weights = []
    for cap in (None, 4):
        with strategy.scope():
            keras.utils.set_random_seed(11)
            model = keras.Sequential(
                [
                    keras.Input((6,)),
                    keras.layers.Dense(8),
                    GhostBatchNormalization(virtual_batch_size=2),
                    keras.layers.Dense(4),
                ]
            )
            optimizer = keras.optimizers.SGD(learning_rate=0.5)
            optimizer.build(model.trainable_variables)
        step = distributed_step(strategy, model, optimizer, xent(), cap)
        step(shard(strategy, x), shard(strategy, y))
        weights.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
