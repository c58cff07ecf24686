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
With `device_data` (data/device_data.py) the iterator yields each replica's index chunk and
the replica gathers its batch from the training set held on its device.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_largebatch.data.device_data import DeviceData
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules.progress import Progress
from keras_largebatch.training.metrics import RunningMetrics, example_stats
from keras_largebatch.training.steps.accumulation import accumulate_gradients
from keras_largebatch.training.steps.grad_norm import estimate_grad_norm_scale
from keras_largebatch.training.steps.many_updates import many_updates
from keras_largebatch.training.steps.noise_scale_step import NoiseScaleProbe
from keras_largebatch.training.steps.reduced_gradients import ReducedGradientTap


def pack_scalars(*values) -> tf.Tensor:
    """Replica context: the per-update scalars as one float32 vector, for `summed_scalars`."""
    return tf.stack([tf.cast(v, tf.float32) for v in values])


def summed_scalars(strategy: tf.distribute.Strategy, packed) -> list[tf.Tensor]:
    """Cross-replica context: each packed scalar summed over the replicas, in ONE collective.

    Across workers every reduce is its own collective, and each costs a network round trip
    whatever its size: the step's metrics (loss sum, correct, count) and the noise-scale
    probe's values were 7 scalar all-reduces per update; on the emulated cluster's 100 Mbit/s
    link the probe's updates took 0.34 s against 0.30 s without it, 0.315 s once packed
    (BUILD_NOTES "Batch size by measurement"). The sums are the same numbers (one float32
    addition per element either way)."""
    return tf.unstack(strategy.reduce(tf.distribute.ReduceOp.SUM, packed, axis=None))


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
        gradient_norm: bool = False,
        adapt_grad_norm_every: int | None = None,
        noise_scale_reference_batch: int | None = None,
        device_data: DeviceData | None = None,
    ):
        if adapt_grad_norm_every is not None and (
                isinstance(adapt_grad_norm_every, bool)
                or not isinstance(adapt_grad_norm_every, int) or adapt_grad_norm_every < 1):
            raise UserInputError(f"adapt_grad_norm_every must be an integer >= 1 or None; got "
                                 f"{adapt_grad_norm_every!r}")
        if adapt_grad_norm_every and max_per_replica_batch:
            raise UserInputError("adapt_grad_norm_every cannot be combined with "
                                 f"max_per_replica_batch={max_per_replica_batch}; drop one")
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.progress = progress
        self.metrics = metrics
        self.repeats = repeats
        self.loss_fn = per_example_loss_fn()
        self.trace_count = 0
        self.max_per_replica_batch = max_per_replica_batch
        self.device_data = device_data
        self.gradient_norm = gradient_norm
        self.adapt_grad_norm_every = adapt_grad_norm_every
        # Seed 003's gradient-norm adaptation factor on the data loss (1 = off); checkpointed.
        self.grad_scale = tf.Variable(1.0, trainable=False, name="grad_scale")
        self._host_updates: int | None = None
        # Gradient noise scale (goodput/noise_scale.py), measured when a reference batch is given.
        self.noise_scale = (None if noise_scale_reference_batch is None else NoiseScaleProbe(
            replicas=strategy.num_replicas_in_sync, repeats=repeats,
            reference_batch=noise_scale_reference_batch))
        # The global gradient's norm, read from the optimizer's own all-reduce (None: not
        # needed, or not readable: then _all_reduced_with_norm, a second all-reduce).
        self._needs_global_norm = gradient_norm or (
            self.noise_scale is not None and self.noise_scale.replicas > 1)
        self._tap = (ReducedGradientTap.attach(optimizer) if self._needs_global_norm
                     else None)
        self._rescale_step = tf.function(self._distributed_rescale_step)
        self._grads_fn = (tf.function(self._loss_and_grads, jit_compile=True)
                          if jit_compile else self._loss_and_grads)
        self._step = tf.function(self._distributed_step)
        self._loop = many_updates(self._distributed_step)  # train.steps_per_loop > 1

    @property
    def exact_for_any_k(self) -> bool:
        """K updates per call are bitwise K single calls (training/loop_length.py), unless the
        host picks the rescaling updates (`adapt_grad_norm_every`)."""
        return not self.adapt_grad_norm_every

    def reset_epoch(self) -> None:
        """Per-epoch statistics of the step itself (none here; see ba_step.py)."""

    def state_variables(self) -> list:
        """Variables a checkpoint holds besides the tf.Variable attributes (checkpoint.py)."""
        return self.noise_scale.variables if self.noise_scale is not None else []

    def epoch_scalars(self) -> dict[str, float]:
        """The smoothed |G|^2, tr(Sigma) and B_simple at the end of an epoch, if measured."""
        if self.noise_scale is None:
            return {}
        return {f"noise_scale/{k}": v for k, v in self.noise_scale.stats.values().items()
                if v is not None}

    def __call__(self, iterator) -> None:
        if self.adapt_grad_norm_every and self.repeats > 1:
            if self._host_updates is None:
                self._host_updates = int(self.optimizer.iterations.numpy())
            rescale = self._host_updates % self.adapt_grad_norm_every == 0
            self._host_updates += 1
            if rescale:
                self._rescale_step(iterator)
                return
        self._step(iterator)

    def run_updates(self, iterator, k: int) -> None:
        """`k` updates in one compiled call (many_updates.py: train.steps_per_loop > 1)."""
        self._loop(iterator, tf.constant(k, tf.int32))

    def _loss_and_grads(self, images, labels):
        """Forward and backward on one replica's batch (XLA-compiled when jit_compile)."""
        replicas = self.strategy.num_replicas_in_sync
        global_batch = tf.cast(tf.shape(labels)[0] * replicas, tf.float32)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            per_example = self.loss_fn(labels, logits)
            loss = tf.reduce_sum(per_example) / global_batch
            if self.adapt_grad_norm_every:
                loss *= self.grad_scale
            if self.model.losses:
                loss += tf.add_n(self.model.losses) / replicas
            if hasattr(self.optimizer, "scale_loss"):
                loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, variables)
        return grads, example_stats(labels, logits, per_example)

    def _accumulated_loss_and_grads(self, images, labels, max_micro_batch):
        """Same result as `_loss_and_grads`, over equal micro-batches (accumulation.py)."""
        result = accumulate_gradients(
            self.model, self.loss_fn, images, labels,
            max_micro_batch=max_micro_batch, optimizer=self.optimizer)
        return result, example_stats(labels, result.predictions, result.per_example_loss)

    def _replica_step(self, images, labels):
        probe = self.noise_scale
        micro_sqr, num_micro = None, tf.ones([], tf.int32)
        cap = self.max_per_replica_batch
        if probe is not None and probe.splits_batch:  # two parts at least (noise_scale_step.py)
            half = tf.maximum(tf.shape(labels)[0] // 2, 1)
            cap = half if cap is None else tf.minimum(cap, half)
        if cap is not None:
            result, stats = self._accumulated_loss_and_grads(images, labels, cap)
            grads, micro_sqr, num_micro = (result.gradients, result.micro_sqr_sum,
                                           result.num_micro_batches)
        else:
            grads, stats = self._grads_fn(images, labels)
        norm, parts = tf.zeros([]), (tf.zeros([]),) * 3
        if probe is not None:
            parts = probe.replica_values(grads, micro_sqr, num_micro, self._unscale())
        if self._needs_global_norm and self._tap is None:
            grads, norm = self._all_reduced_with_norm(grads)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        if self._needs_global_norm and self._tap is not None:
            norm = tf.linalg.global_norm(self._tap.take())  # reduced_gradients.py
        return pack_scalars(*stats, norm, *parts)

    def _unscale(self):
        """The factor gradients carry beyond d(loss): a mixed-precision loss scale, seed 003's
        grad_scale."""
        scale = tf.cast(self.grad_scale, tf.float32) if self.adapt_grad_norm_every else 1.0
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            scale *= tf.cast(self.optimizer.dynamic_scale, tf.float32)
        return tf.convert_to_tensor(scale, tf.float32)

    def _all_reduced_with_norm(self, grads):
        """L2 norm of the global gradient (seed 003 Fig. 4) where the optimizer's own all-reduce
        cannot be read (reduced_gradients.py: a LossScaleOptimizer).

        We all-reduce here to see the global gradient, then hand the optimizer grads / R: its own
        all-reduce sums R identical copies back to the global gradient (exact for R = 2^k), at
        the price of a second gradient-sized all-reduce.
        """
        replicas = self.strategy.num_replicas_in_sync
        present = [g for g in grads if g is not None]
        reduced = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, present)
        norm = tf.linalg.global_norm(reduced)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            norm /= tf.cast(self.optimizer.dynamic_scale, norm.dtype)
        it = iter(reduced)
        grads = [None if g is None else next(it) / replicas for g in grads]
        return grads, norm

    def _replica_grad_scale(self, images, labels):
        """Seed 003 authors' grad_scale on this batch (steps/grad_norm.py), global gradients."""
        replicas = self.strategy.num_replicas_in_sync
        variables = self.model.trainable_variables
        context = tf.distribute.get_replica_context()

        def global_grads(x, y):
            with tf.GradientTape() as tape:
                logits = self.model(x, training=True)
                loss = tf.reduce_sum(self.loss_fn(y, logits)) / tf.cast(
                    tf.shape(y)[0] * replicas, tf.float32)
            grads = [tf.zeros_like(v) if g is None else g
                     for g, v in zip(tape.gradient(loss, variables), variables)]
            return context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

        return estimate_grad_norm_scale(global_grads, images, labels, repeats=self.repeats)

    def _distributed_step(self, iterator):
        self.trace_count += 1  # Python side effect: runs only while tracing
        batch = next(iterator)
        if self.device_data is not None:  # batch: this replica's indices
            data = self.device_data
            self._after_replicas(self.strategy.run(
                self._replica_step_on_indices, args=(batch, data.images, data.labels)))
        else:
            self._train_on(*batch)

    def _replica_step_on_indices(self, indices, images, labels):
        return self._replica_step(*DeviceData.lookup(indices, images, labels))

    def _distributed_rescale_step(self, iterator):
        """Every `adapt_grad_norm_every` updates: re-estimate grad_scale, then train."""
        images, labels = next(iterator)
        scale = self.strategy.run(self._replica_grad_scale, args=(images, labels))
        self.grad_scale.assign(
            self.strategy.reduce(tf.distribute.ReduceOp.MEAN, scale, axis=None))
        self._train_on(images, labels)

    def _train_on(self, images, labels):
        self._after_replicas(self.strategy.run(self._replica_step, args=(images, labels)))

    def _after_replicas(self, packed):
        """Cross-replica context: the running metrics, the noise scale and the progress."""
        loss_sum, correct, count, norm, local_sqr, one_replica_total, parts = summed_scalars(
            self.strategy, packed)
        self.metrics.update(loss_sum, correct, count)
        mean = lambda v: v / float(self.strategy.num_replicas_in_sync)  # of the summed value
        if self.gradient_norm:
            self.metrics.update_gradient_norm(mean(norm))
        if self.noise_scale is not None:
            if self.noise_scale.replicas > 1:
                total = mean(norm)  # |G_B| of the loss times grad_scale (seed 003), if adapted
                if self.adapt_grad_norm_every:
                    total /= tf.cast(self.grad_scale, total.dtype)
                total_sqr = total * total
            else:
                total_sqr = mean(one_replica_total)
            self.noise_scale.update(mean(local_sqr), total_sqr, mean(parts),
                                    count / self.repeats)
        self.progress.advance(count / self.repeats)
