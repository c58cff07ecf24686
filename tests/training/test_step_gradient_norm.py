"""Seed 003's gradient statistics in the compiled step, against gradients taken directly.

- `gradient_norm=True` logs ||g|| of the global gradient and leaves the update unchanged
  (all-reduced once here, grads / R to the optimizer), on 1 and 2 replicas.
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
