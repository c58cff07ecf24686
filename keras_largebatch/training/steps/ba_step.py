"""The framework loop's step for BA-Momentum / BA-SGD (seed 002): one chunk per call.

    step = BAChunkStep(model=..., optimizer=BAMomentum(...), strategy=..., progress=...,
                       metrics=..., summary_writer=writer)
    step(distributed_iterator)      # adds one global chunk of m0 = min_increment examples;
                                    # updates the model when the grown batch reached m*

The pipeline's global batch is m0 (`train.batch_size` must equal `BAMomentum.min_increment`),
so an epoch is N // m0 chunks and the number of updates per epoch is what the optimizer chose.
Per update the step writes, in-graph (no host round-trip), at x = update index:
`ba/batch_size` (seed 002 Fig. 3), `ba/m_star`, `ba/mu`, `ba/sigma`, `ba/s`. Per epoch the loop
reads `epoch_scalars()`: the number of updates and their mean batch size.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_largebatch.optimizers.ba_model import ba_chunk_step
from keras_largebatch.schedules.progress import Progress
from keras_largebatch.training.metrics import RunningMetrics
from keras_largebatch.training.steps.many_updates import many_updates
from keras_largebatch.training.steps.train_step import (
    pack_scalars,
    per_example_loss_fn,
    summed_scalars,
)


class BAChunkStep:
    """Callable `step(iterator)`, traced once; same protocol as `TrainStep`."""

    # K chunks per call compile the per-example statistics differently (round-off apart from K
    # single calls), so train.steps_per_loop = 'auto' means 1 here (training/loop_length.py).
    exact_for_any_k = False

    def __init__(self, *, model: keras.Model, optimizer, strategy: tf.distribute.Strategy,
                 progress: Progress, metrics: RunningMetrics, summary_writer=None):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.progress, self.metrics = progress, metrics
        self.summary_writer = summary_writer or tf.summary.create_noop_writer()
        self.loss_fn = per_example_loss_fn()
        self.trace_count = 0
        self.repeats = 1
        kw = dict(trainable=False, dtype=tf.float64)
        self._epoch_updates = tf.Variable(0.0, name="ba_epoch_updates", **kw)
        self._epoch_batch_sum = tf.Variable(0.0, name="ba_epoch_batch_sum", **kw)
        self._step = tf.function(self._distributed_step)
        self._loop = many_updates(self._distributed_step)  # train.steps_per_loop > 1

    def __call__(self, iterator) -> None:
        self._step(iterator)

    def run_updates(self, iterator, k: int) -> None:
        """`k` updates in one compiled call (many_updates.py: train.steps_per_loop > 1)."""
        self._loop(iterator, tf.constant(k, tf.int32))

    def reset_epoch(self) -> None:
        self._epoch_updates.assign(0.0)
        self._epoch_batch_sum.assign(0.0)

    def epoch_scalars(self) -> dict[str, float]:
        updates = float(self._epoch_updates.numpy())
        mean = float(self._epoch_batch_sum.numpy()) / updates if updates else 0.0
        return {"ba/updates_per_epoch": updates, "ba/mean_batch_size": mean}

    def _replica_chunk(self, images, labels):
        out = ba_chunk_step(self.model, self.optimizer, self.loss_fn, images, labels,
                            return_predictions=True)
        logits = out.pop("y_pred")
        per_example = self.loss_fn(labels, logits)
        predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return out, pack_scalars(tf.reduce_sum(per_example), correct, count)

    def _distributed_step(self, iterator):
        self.trace_count += 1  # Python side effect: runs only while tracing
        images, labels = next(iterator)
        out, stats = self.strategy.run(self._replica_chunk, args=(images, labels))
        loss_sum, correct, count = summed_scalars(self.strategy, stats)  # one collective
        self.metrics.update(loss_sum, correct, count)
        self.progress.advance(count)
        # The optimizer's outputs are identical on every replica: read the first.
        first = {k: self.strategy.experimental_local_results(v)[0] for k, v in out.items()}
        did_update = first["did_update"]
        size = tf.cast(first["batch_size_of_update"], tf.float64)
        self._epoch_updates.assign_add(tf.cast(did_update, tf.float64))
        self._epoch_batch_sum.assign_add(size)

        step = tf.cast(self.optimizer.iterations, tf.int64)  # after this chunk's update
        with self.summary_writer.as_default(step=step), tf.summary.record_if(did_update):
            tf.summary.scalar("ba/batch_size", size)
            for key in ("m_star", "mu", "sigma", "s"):
                tf.summary.scalar(f"ba/{key}", tf.cast(first[key], tf.float64))
