"""Running sums of loss and accuracy, kept in variables so the compiled step updates them
without a host round-trip; the host reads them every few steps for the progress bar and at
the end of an epoch for TensorBoard."""

from __future__ import annotations

import tensorflow as tf


class RunningMetrics(tf.Module):
    """loss_sum, correct and count over examples seen since the last `reset`."""

    def __init__(self, name: str = "metrics"):
        super().__init__(name=name)
        kw = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, name="loss_sum", **kw)
        self.correct = tf.Variable(0.0, dtype=tf.float64, name="correct", **kw)
        self.count = tf.Variable(0.0, dtype=tf.float64, name="count", **kw)
        self.gradient_norm_sum = tf.Variable(0.0, dtype=tf.float64, name="grad_norm_sum", **kw)
        self.gradient_norm_count = tf.Variable(0.0, dtype=tf.float64, name="grad_norm_n", **kw)

    def reset(self) -> None:
        for v in (self.loss_sum, self.correct, self.count, self.gradient_norm_sum,
                  self.gradient_norm_count):
            v.assign(0.0)

    def update(self, loss_sum, correct, count) -> None:
        self.loss_sum.assign_add(tf.cast(loss_sum, tf.float64))
        self.correct.assign_add(tf.cast(correct, tf.float64))
        self.count.assign_add(tf.cast(count, tf.float64))

    def update_gradient_norm(self, norm) -> None:
        self.gradient_norm_sum.assign_add(tf.cast(norm, tf.float64))
        self.gradient_norm_count.assign_add(1.0)

    def result(self) -> dict[str, float]:
        n = max(float(self.count.numpy()), 1.0)
        return {"loss": float(self.loss_sum.numpy()) / n,
                "accuracy": float(self.correct.numpy()) / n}

    def gradient_norm(self) -> float | None:
        """Mean L2 norm of the global gradient per update since `reset`, if measured."""
        n = float(self.gradient_norm_count.numpy())
        return float(self.gradient_norm_sum.numpy()) / n if n else None


def example_stats(labels, logits, per_example_loss):
    """Sum of losses, number correct, number of examples for one (per-replica) batch."""
    predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    return tf.reduce_sum(per_example_loss), correct, count


def masked_example_stats(labels, logits, per_example_loss, valid):
    """`example_stats` over the rows where `valid` is True (evaluation's padding rows excluded;
    `tf.where`, not a product, so a non-finite loss on a padding row cannot leak in)."""
    predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    hit = tf.logical_and(valid, tf.equal(predictions, labels))
    zeros = tf.zeros_like(per_example_loss)
    return (tf.reduce_sum(tf.where(valid, per_example_loss, zeros)),
            tf.reduce_sum(tf.cast(hit, tf.float32)),
            tf.reduce_sum(tf.cast(valid, tf.float32)))
