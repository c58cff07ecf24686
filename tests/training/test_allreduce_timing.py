"""training/allreduce_timing.py: one all-reduce of every trainable variable's shape, through the
replicas' context (what the optimizer all-reduces each update), timed after an untimed call."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.models import build_model
from keras_largebatch.training.allreduce_timing import AllReduceTimer

SMALL = {"filters": (8, 16), "dropout": 0.0}


def test_times_one_all_reduce_of_the_gradients(two_cpu_strategy, monkeypatch):
    strategy = two_cpu_strategy
    with strategy.scope():
        model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10, **SMALL)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    sizes = []
    original = tf.distribute.ReplicaContext.all_reduce

    def counting(context, reduce_op, value, options=None):
        sizes.append(sum(int(np.prod(v.shape)) for v in tf.nest.flatten(value)))
        return original(context, reduce_op, value, options)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)
    timer = AllReduceTimer(strategy, model.trainable_variables)
    assert timer.values == params
    seconds = timer.measure(rounds=2)
    assert math.isfinite(seconds) and 0 < seconds < 60
    # Traced once (the untimed call), one all-reduce of every gradient per replica.
    assert sizes == [params, params]
    timer.measure(rounds=1)
    assert len(sizes) == 2  # no retrace on later decisions


def test_rounds_must_be_positive(one_cpu_strategy):
    timer = AllReduceTimer(one_cpu_strategy, [tf.Variable(tf.zeros(3))])
    with pytest.raises(ValueError, match="rounds=0"):
        timer.measure(rounds=0)
