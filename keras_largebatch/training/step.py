"""The compiled train step of the framework loop: one trace for every batch size.

    step = TrainStep(model=..., optimizer=..., strategy=..., progress=..., metrics=...)
    step(distributed_iterator)      # one optimizer update on the next global batch

Per replica: loss = sum_i l(x_i, y_i) / (global effective batch) + model.losses / replicas
(over equal micro-batches when the batch exceeds `max_per_replica_batch`, one update either way);
gradients go to `optimizer.apply_gradients`, which (Keras 3, TF backend) all-reduces them
across replicas - exactly once, never here. Afterwards, in cross-replica context, the running
metrics and the `Progress` (fractional epoch, samples seen) advance.

The distributed iterator's element spec has a `None` batch dimension (see data/pipeline.py),
so `tf.function` traces this once for the whole run; `trace_count` lets tests check that.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_largebatch.training.accumulation import accumulate_gradients
from keras_largebatch.training.metrics import RunningMetrics, example_stats
from keras_largebatch.training.progress import Progress


def per_example_loss_fn():
    """Sparse categorical cross-entropy on logits, one value per example."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


class TrainStep:
    """Callable `step(iterator)`; compiled lazily on first call."""

    def __init__(
        self,
        *,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        progress: Progress,
        metrics: RunningMetrics,
        repeats: int = 1,
        jit_compile: bool = False,
        max_per_replica_batch: int | None = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.progress = progress
        self.metrics = metrics
        self.repeats = repeats
        self.loss_fn = per_example_loss_fn()
        self.trace_count = 0
        self.max_per_replica_batch = max_per_replica_batch
        self._grads_fn = (tf.function(self._loss_and_grads, jit_compile=True)
                          if jit_compile else self._loss_and_grads)
        self._step = tf.function(self._distributed_step)

    def __call__(self, iterator) -> None:
        self._step(iterator)

    def _loss_and_grads(self, images, labels):
        """Forward and backward on one replica's batch (XLA-compiled when jit_compile)."""
        replicas = self.strategy.num_replicas_in_sync
        global_batch = tf.cast(tf.shape(labels)[0] * replicas, tf.float32)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            per_example = self.loss_fn(labels, logits)
            loss = tf.reduce_sum(per_example) / global_batch
            if self.model.losses:
                loss += tf.add_n(self.model.losses) / replicas
            if hasattr(self.optimizer, "scale_loss"):
                loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        return grads, example_stats(labels, logits, per_example)

    def _accumulated_loss_and_grads(self, images, labels):
        """Same result as `_loss_and_grads`, over equal micro-batches (accumulation.py)."""
        result = accumulate_gradients(
            self.model, self.loss_fn, images, labels,
            max_micro_batch=self.max_per_replica_batch, optimizer=self.optimizer)
        return result.gradients, example_stats(labels, result.predictions,
                                               result.per_example_loss)

    def _replica_step(self, images, labels):
        if self.max_per_replica_batch:
            grads, stats = self._accumulated_loss_and_grads(images, labels)
        else:
            grads, stats = self._grads_fn(images, labels)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return stats

    def _distributed_step(self, iterator):
        self.trace_count += 1  # Python side effect: runs only while tracing
        images, labels = next(iterator)
        stats = self.strategy.run(self._replica_step, args=(images, labels))
        loss_sum, correct, count = (
            self.strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in stats
        )
        self.metrics.update(loss_sum, correct, count)
        self.progress.advance(count / self.repeats)
