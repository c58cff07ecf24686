"""The compiled train step: one trace for all batch sizes, replica-count invariance, and one
hand-checked SGD update."""

import keras
import numpy as np
import tensorflow as tf

from keras_largebatch.data import train_dataset_fn
from keras_largebatch.models import build_model
from keras_largebatch.schedules.progress import Progress
from keras_largebatch.training.metrics import RunningMetrics
from keras_largebatch.training.steps.train_step import TrainStep

from .helpers import fashion_subset


def _setup(strategy, initial_weights=None, lr=0.05):
    with strategy.scope():
        model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                            filters=(8, 16), dropout=0.0)
        if initial_weights is not None:
            model.set_weights(initial_weights)
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
        opt.build(model.trainable_variables)
        metrics = RunningMetrics()
    progress = Progress()
    step = TrainStep(model=model, optimizer=opt, strategy=strategy, progress=progress,
                     metrics=metrics)
    return model, step, progress


def _run(strategy, step, source, batch, steps, epoch=0):
    it = iter(strategy.distribute_datasets_from_function(
        train_dataset_fn(source, global_batch_size=batch, epoch=epoch, seed=0)))
    for _ in range(steps):
        step(it)


def test_one_trace_across_three_batch_sizes(two_cpu_strategy):
    source = fashion_subset()
    _, step, progress = _setup(two_cpu_strategy)
    for epoch, batch in enumerate((32, 64, 256)):
        progress.begin_epoch(epoch, source.num_train // batch)
        _run(two_cpu_strategy, step, source, batch, steps=3, epoch=epoch)
    assert step.trace_count == 1
    assert int(progress.samples_seen.numpy()) == 3 * (32 + 64 + 256)
    np.testing.assert_allclose(progress.epoch.numpy(), 2 + 3 / (2048 // 256))


def _ten_steps_from_one_draw(strategies):
    """(initial weights, [weights after ten updates of batch 64 under each strategy])."""
    source = fashion_subset()
    # A fixed initial draw: float32 sums in another order differ in the last bits, and ten
    # updates through max-pool ties and ReLU kinks amplify that by an amount that depends on
    # the draw: from unseeded draws the first kernel differed by 1.5e-7 to 2.9e-3 (10 test
    # processes, measured), so the two-replica test failed at random. Within one process the
    # runs are repeatable (4 runs of each strategy, equal to the bit).
    keras.utils.set_random_seed(0)
    init = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                       filters=(8, 16), dropout=0.0).get_weights()
    results = []
    for strategy in strategies:
        model, step, _ = _setup(strategy, init)
        _run(strategy, step, source, batch=64, steps=10)
        results.append([w.copy() for w in model.get_weights()])
    return init, results


def test_two_replicas_equal_one_after_ten_steps(one_cpu_strategy, two_cpu_strategy):
    init, results = _ten_steps_from_one_draw((one_cpu_strategy, two_cpu_strategy))
    for w1, w2, w0 in zip(*results, init):
        assert not np.allclose(w1, w0)  # training moved the weights
        # Relative to the tensor's norm: float32 sums in a different order (2 x 32 + all-reduce
        # vs 64) differ in the last bits, which is all this tolerance allows.
        rel = np.linalg.norm(w2 - w1) / np.linalg.norm(w1)
        print(f"relative difference {rel:.2e} for shape {w1.shape}")
        assert rel < 1e-5


def test_one_device_default_strategy_equals_mirrored_over_that_device(one_cpu_strategy):
    """make_strategy() on one device is TensorFlow's default strategy (training/strategy.py),
    not a MirroredStrategy over it: the same ten updates to the bit (a one-replica all-reduce is
    the identity either way)."""
    from keras_largebatch.training.strategy import make_strategy

    default = make_strategy()
    assert default is tf.distribute.get_strategy() and default.num_replicas_in_sync == 1
    assert not isinstance(default, tf.distribute.MirroredStrategy)
    init, results = _ten_steps_from_one_draw((one_cpu_strategy, default))
    for mirrored, plain, w0 in zip(*results, init):
        assert not np.allclose(plain, w0)
        np.testing.assert_array_equal(plain, mirrored)


def test_single_update_matches_hand_computed_sgd(one_cpu_strategy):
    """Plain SGD, one step: w1 = w0 - lr * mean-gradient, gradient taken independently."""
    source = fashion_subset()
    model, step, _ = _setup(one_cpu_strategy, lr=0.1)
    step.optimizer.momentum = 0.0
    w0 = [v.numpy().copy() for v in model.trainable_variables]
    x, y = next(iter(train_dataset_fn(source, global_batch_size=32, epoch=0, seed=0)()))
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    grads = tape.gradient(loss, model.trainable_variables)
    _run(one_cpu_strategy, step, source, batch=32, steps=1)
    for v, before, g in zip(model.trainable_variables, w0, grads):
        np.testing.assert_allclose(v.numpy(), before - 0.1 * g.numpy(), rtol=1e-5, atol=1e-7)


def test_accumulated_step_equals_direct_step(one_cpu_strategy):
    """Batch 64 as 4 micro-batches of 16 gives the same update (BN-free model)."""
    source = fashion_subset()
    init = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                       filters=(8, 16), dropout=0.0).get_weights()
    weights = []
    for cap in (None, 16):
        model, step, _ = _setup(one_cpu_strategy, init)
        step.max_per_replica_batch = cap
        _run(one_cpu_strategy, step, source, batch=64, steps=3)
        weights.append(model.get_weights())
        assert int(step.optimizer.iterations.numpy()) == 3  # one update per step
    for direct, accumulated in zip(*weights):
        assert np.linalg.norm(accumulated - direct) / np.linalg.norm(direct) < 1e-5
