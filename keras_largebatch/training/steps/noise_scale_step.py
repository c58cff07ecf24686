"""Gradient-noise-scale measurement inside the framework's train step (TensorFlow).

    probe = NoiseScaleProbe(replicas=R, repeats=M, reference_batch=128)
    # replica context, after this replica's gradients (train_step.py):
    local, total, parts = probe.replica_values(grads, micro_sqr_sum, n, unscale)
    # cross-replica context:
    probe.update(mean(local), total_sqr, parts, batch)

The estimator is goodput/noise_scale.py (McCandlish et al. 2018, Appendix A): a batch of B
distinct samples seen as `parts` equal parts of B / parts samples gives |G|^2 and tr(Sigma)
from the mean squared norm of the parts' mean gradients and the squared norm of the whole
batch's. The parts are what the step computes anyway, with no extra backward pass:

- the R replicas' batches (R >= 2): replica r's gradient of sum(loss) / B is g_r, so the mean
  gradient of its B / R samples is R g_r; the whole batch's is the all-reduced one, read from
  the optimizer's own all-reduce (reduced_gradients.py; as `train.log_gradient_norm` does): a
  few scalars more per update, no second gradient all-reduce (one, `_all_reduced_with_norm`,
  under a LossScaleOptimizer).
- and within each replica, the micro-batches of gradient accumulation (n per replica,
  `train.max_per_replica_batch`): parts = n R, micro-batch k's gradient g_k of
  sum_{i in k} l_i / B + reg / (n R) is 1 / (n R) of its mean gradient. With one replica and
  no accumulation the step splits the batch into n = 2 micro-batches (accumulation.py): the
  update is the same gradient (summed in another order), but batch-statistics layers see B / 2
  samples, and a per-replica batch must be even.

With batch augmentation (M > 1 copies, copy-major rows) micro-batches would hold copies of the
same samples, not independent ones: only replicas count as parts, and one replica is refused.
B counts distinct samples. A differenced estimator over two consecutive updates (the
reference's fallback for one replica, petuum/adaptdl) was tried and dropped: the parameters
move between the two gradients, and on the tiny test config it gave tr(Sigma) ~ 25x the
two-replica estimate (BUILD_NOTES "Gradient noise scale").
"""

from __future__ import annotations

import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.goodput.noise_scale import SmoothedGradientStats, estimates_from_parts


def squared_norm(tensors) -> tf.Tensor:
    """sum_i |t_i|^2 in float32 (None entries skipped)."""
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(t, tf.float32)))
                     for t in tensors if t is not None] or [tf.zeros([])])


def check_noise_scale_batch(per_replica_batch: int, replicas: int, repeats: int) -> None:
    """Host-side: the batches the probe can split into independent parts (one error line)."""
    if replicas > 1:
        return
    if repeats > 1:
        raise UserInputError(f"train.gradient_noise_scale with train.repeats = {repeats} needs "
                             "at least 2 replicas (copies of one sample are not independent "
                             "parts); set make_strategy.num_cpu_replicas = 2 or drop it")
    if per_replica_batch % 2:
        raise UserInputError(f"train.gradient_noise_scale on one replica splits each batch in "
                             f"two; the global batch {per_replica_batch} is odd: use an even "
                             f"batch size")


class NoiseScaleProbe:
    """Per-update estimates of |G|^2 and tr(Sigma), folded into `stats` (checkpointed)."""

    def __init__(self, *, replicas: int, repeats: int, reference_batch: int,
                 smoothing: float = 0.999):
        self.replicas, self.repeats = int(replicas), int(repeats)
        self.stats = SmoothedGradientStats(reference_batch, smoothing)

    @property
    def variables(self) -> list:
        """What a checkpoint must hold for an exact resume (tf.Variables)."""
        return [v.value for v in self.stats.variables]

    @property
    def splits_batch(self) -> bool:
        """Whether the step must cut one replica's batch in two micro-batches for us."""
        return self.replicas == 1

    @property
    def uses_micro_batches(self) -> bool:
        return self.repeats == 1

    def replica_values(self, grads, micro_sqr_sum, num_micro, unscale):
        """Replica context: (mean over this replica's parts of |part mean gradient|^2,
        |G_B|^2 if one replica (else 0: the all-reduce gives it), parts of this replica).

        `grads`: this replica's gradient of sum(loss) / B (times `unscale`: a loss scale,
        seed 003's grad_scale); `micro_sqr_sum`: sum over its micro-batches of their squared
        gradient norms (None without accumulation); `num_micro`: their number."""
        r = float(self.replicas)
        if micro_sqr_sum is not None and self.uses_micro_batches:
            n = tf.cast(num_micro, tf.float32)
            local = micro_sqr_sum * n * r * r / (unscale * unscale)
        else:
            n = tf.ones([])
            local = squared_norm(grads) * r * r / (unscale * unscale)
        total = (squared_norm(grads) / (unscale * unscale) if self.replicas == 1
                 else tf.zeros([]))
        return local, total, n

    def update(self, mean_local_sqr, total_sqr, parts_per_replica, batch) -> None:
        """Cross-replica context: fold this update's estimate into `stats`. `batch`: distinct
        samples of the update."""
        batch = tf.cast(batch, tf.float32)
        parts = tf.cast(parts_per_replica, tf.float32) * float(self.replicas)
        g2, trace = estimates_from_parts(mean_local_sqr, total_sqr, batch,
                                         tf.maximum(parts, 2.0))
        ok = parts > 1.0  # one part (cannot happen once the checks passed): nothing to learn

        def fold():
            self.stats.update(g2, trace, batch)
            return tf.zeros([])

        tf.cond(ok, fold, lambda: tf.zeros([]))
