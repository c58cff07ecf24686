"""Seed 003's gradient statistics in the compiled step, against gradients taken directly.

- `gradient_norm=True` logs ||g|| of the global gradient and leaves the update unchanged, on 1
  and 2 replicas; the gradients are all-reduced once per update (the optimizer's all-reduce,
  read by training/steps/reduced_gradients.py), not twice, also with the noise-scale probe;
  under a LossScaleOptimizer (where it cannot be read) the step's own all-reduce gives the same
  norm.
- `adapt_grad_norm_every=1` sets grad_scale = mean_j ||g(copy j)|| / ||g(all copies)|| on the
  batch it then trains on (authors' code, training/steps/grad_norm.py).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.data import train_dataset_fn
from keras_largebatch.data.augment import make_augment
from keras_largebatch.models import build_model
from keras_largebatch.schedules.progress import Progress
from keras_largebatch.training.metrics import RunningMetrics
from keras_largebatch.training.steps.train_step import TrainStep

from .helpers import fashion_subset

SMALL = dict(input_shape=(28, 28, 1), num_classes=10, filters=(8, 16), dropout=0.0)


def _step(strategy, weights, **kw):
    with strategy.scope():
        model = build_model("cnn_fashion", **SMALL)
        model.set_weights(weights)
        opt = keras.optimizers.SGD(0.1)
        opt.build(model.trainable_variables)
        metrics = RunningMetrics()
    return model, TrainStep(model=model, optimizer=opt, strategy=strategy, progress=Progress(),
                            metrics=metrics, **kw)


def _grads(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=y, logits=model(x, training=True)))
    return tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("replicas", [1, 2])
def test_logged_norm_is_the_global_gradient_norm(replicas, one_cpu_strategy, two_cpu_strategy):
    strategy = one_cpu_strategy if replicas == 1 else two_cpu_strategy
    source = fashion_subset()
    init = build_model("cnn_fashion", **SMALL).get_weights()
    fn = train_dataset_fn(source, global_batch_size=64, epoch=0, seed=3)
    x, y = next(iter(fn()))
    reference = build_model("cnn_fashion", **SMALL)
    reference.set_weights(init)
    grads = _grads(reference, x, y)
    expected_norm = float(tf.linalg.global_norm(grads))

    model, step = _step(strategy, init, gradient_norm=True)
    step(iter(strategy.distribute_datasets_from_function(fn)))
    assert step.metrics.gradient_norm() == pytest.approx(expected_norm, rel=1e-5)
    for v, w0, g in zip(model.trainable_variables, init, grads):  # the update is plain SGD
        np.testing.assert_allclose(v.numpy(), w0 - 0.1 * g.numpy(), rtol=1e-4, atol=1e-6)


class _CountingAllReduce:
    """Wraps ReplicaContext.all_reduce: the number of values each call reduces, per replica."""

    def __init__(self, monkeypatch):
        self.sizes = []
        original = tf.distribute.ReplicaContext.all_reduce

        def counting(context, reduce_op, value, options=None):
            flat = tf.nest.flatten(value)
            self.sizes.append(sum(int(np.prod(v.shape)) for v in flat))
            return original(context, reduce_op, value, options)

        monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)


@pytest.mark.parametrize("options", [dict(gradient_norm=True),
                                     dict(noise_scale_reference_batch=64)],
                         ids=["gradient_norm", "noise_scale"])
def test_one_gradient_all_reduce_per_update(options, two_cpu_strategy, monkeypatch):
    """Each replica all-reduces its gradients once (the optimizer's), however the global norm
    is read: the sizes reduced in a traced update sum to the parameter count per replica, plus
    nothing gradient-sized (before: 2x, the step's own all-reduce and the optimizer's); and the
    scalars go in one reduce."""
    strategy = two_cpu_strategy
    init = build_model("cnn_fashion", **SMALL).get_weights()
    params = sum(w.size for w in init)
    fn = train_dataset_fn(fashion_subset(), global_batch_size=64, epoch=0, seed=3)
    model, step = _step(strategy, init, **options)
    counter = _CountingAllReduce(monkeypatch)
    reduces = []
    original_reduce = strategy.reduce
    monkeypatch.setattr(strategy, "reduce", lambda *a, **k: reduces.append(a[0]) or
                        original_reduce(*a, **k))
    step(iter(strategy.distribute_datasets_from_function(fn)))
    gradient_sized = [n for n in counter.sizes if n >= 100]
    assert sum(gradient_sized) == 2 * params  # 2 replicas x one all-reduce of every gradient
    assert len(gradient_sized) == 2
    # Every per-update scalar (metrics, norm, the probe's values) in one cross-replica reduce
    # (train_step.summed_scalars): before, 3 for the metrics and up to 4 more.
    assert len(reduces) == 1


def test_loss_scale_optimizer_norm_falls_back(one_cpu_strategy, two_cpu_strategy):
    """Under a LossScaleOptimizer the optimizer's all-reduce sits in a tf.cond branch: the step
    all-reduces itself (one more) and divides out the loss scale; the norm is the same."""
    strategy = two_cpu_strategy
    source = fashion_subset()
    init = build_model("cnn_fashion", **SMALL).get_weights()
    fn = train_dataset_fn(source, global_batch_size=64, epoch=0, seed=3)
    x, y = next(iter(fn()))
    reference = build_model("cnn_fashion", **SMALL)
    reference.set_weights(init)
    expected_norm = float(tf.linalg.global_norm(_grads(reference, x, y)))
    with strategy.scope():
        model = build_model("cnn_fashion", **SMALL)
        model.set_weights(init)
        opt = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
        opt.build(model.trainable_variables)
        metrics = RunningMetrics()
    step = TrainStep(model=model, optimizer=opt, strategy=strategy, progress=Progress(),
                     metrics=metrics, gradient_norm=True)
    assert step._tap is None
    step(iter(strategy.distribute_datasets_from_function(fn)))
    assert step.metrics.gradient_norm() == pytest.approx(expected_norm, rel=1e-5)


def test_tap_refuses_an_update_that_did_not_all_reduce():
    from keras_largebatch.training.steps.reduced_gradients import ReducedGradientTap

    tap = ReducedGradientTap.attach(keras.optimizers.SGD(0.1))
    with pytest.raises(RuntimeError, match="did not call _all_reduce_sum_gradients"):
        tap.take()


def test_adapted_scale_matches_copy_gradient_norms(one_cpu_strategy):
    source = fashion_subset()
    augment = make_augment("cutout", input_shape=source.input_shape, mean=source.mean)
    init = build_model("cnn_fashion", **SMALL).get_weights()
    fn = train_dataset_fn(source, global_batch_size=32, epoch=0, seed=1, repeats=3,
                          augment=augment)
    x, y = next(iter(fn()))
    reference = build_model("cnn_fashion", **SMALL)
    reference.set_weights(init)
    copy_norms = [float(tf.linalg.global_norm(_grads(reference, x[j * 32:(j + 1) * 32],
                                                     y[j * 32:(j + 1) * 32])))
                  for j in range(3)]
    full_norm = float(tf.linalg.global_norm(_grads(reference, x, y)))
    expected = np.mean(copy_norms) / full_norm
    assert expected > 1.0  # differently augmented copies: averaging shrinks the gradient

    _, step = _step(one_cpu_strategy, init, repeats=3, adapt_grad_norm_every=1)
    step(iter(one_cpu_strategy.distribute_datasets_from_function(fn)))
    assert float(step.grad_scale.numpy()) == pytest.approx(expected, rel=1e-4)
    assert int(step.optimizer.iterations.numpy()) == 1  # the estimate batch is also trained on


def test_bad_adapt_interval():
    from keras_largebatch.errors import UserInputError

    with pytest.raises(UserInputError, match="adapt_grad_norm_every must be an integer >= 1"):
        TrainStep(model=None, optimizer=None, strategy=None, progress=None, metrics=None,
                  adapt_grad_norm_every=0)
