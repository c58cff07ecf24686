"""Ghost batch normalization: BN statistics over virtual batches, not the whole batch.

    x = GhostBatchNormalization(virtual_batch_size=32)(x)     # per-replica batch 256 -> 8 groups

Hoffer et al. 2017 ("Train longer, generalize better") normalise each slice of
`virtual_batch_size` consecutive samples with that slice's own mean and (biased) variance; seed
001 Section 3.6 finds the best BN batch (4-8) nearly independent of the SGD batch, and seed 003
uses ghost BN for its large batches. Keras 3's `BatchNormalization` has no `virtual_batch_size`,
so this layer subclasses it: same weights (gamma, beta, moving_mean, moving_variance), same
config plus `virtual_batch_size`, same inference path.

Training with n = batch / virtual_batch_size > 1 groups, for each feature:

    y = gamma * (x - mean_g) / sqrt(var_g + epsilon) + beta        inside group g

and the moving statistics are updated the way Composer's `GhostBatchNorm` does it: Composer runs
the wrapped BN once per chunk, in order, after dividing PyTorch's momentum (the weight of the new
statistic) by the number of chunks. In Keras' convention (momentum = weight of the old value)
that is n sequential updates

    moving <- moving * (1 - a) + stat_g * a,   a = (1 - momentum) / n,   g = 0 .. n-1,

applied here in closed form, moving <- (1 - a)^n moving + sum_g a (1 - a)^(n-1-g) stat_g. Per
training step the old value keeps weight (1 - (1 - momentum)/n)^n ~ momentum, so the moving
averages forget at the rate Keras' BatchNormalization would, and they estimate the statistics
of a *virtual* batch, which is what inference should use to match training-time normalisation.
`stat_g` is the biased group variance, as Keras BN uses the biased batch variance.

`virtual_batch_size=None`, or a batch no larger than `virtual_batch_size`, runs Keras'
`BatchNormalization.call` itself (in-graph `tf.cond` when the batch is dynamic), so the result
is bit-identical to BatchNormalization. A batch larger than `virtual_batch_size` but not a
multiple of it is an error (a ValueError at trace time when the batch is static, an
`InvalidArgumentError` naming the sizes at run time when it is dynamic): pipelines use
`drop_remainder=True`. The batch axis (0) is split; `axis` is the feature axis as in Keras.

Under `tf.distribute` the batch seen here is the per-replica batch, and by default (as in
Keras' BN with `synchronized=False`) each replica updates its own copy of the moving
statistics, so the copies drift apart and inference depends on the replica it runs on.

`sync_moving_statistics=True` synchronises the moving statistics only: the
training-mode output stays normalised per ghost batch *on each replica* (the point of ghost
BN, Hoffer et al. 2017; seed 001 Section 3.6: the BN batch is set apart from the SGD batch,
and a cross-replica BN batch would be the opposite), while each replica's update increment
sum_g a (1 - a)^(n-1-g) stat_g is all-reduced (MEAN) over the replicas in sync before it is
applied. All copies start equal and receive the same update, so they stay identical; the
moving statistics become the average over every replica's ghost batches, the estimate that
inference should use. One all-reduce of 2 x features floats per layer and step; nothing is
exchanged with one replica or outside a replica context. With synchronisation, a per-replica
batch no larger than `virtual_batch_size` is one group of the same rule, so its statistics are
synchronised too. Keras' own `synchronized=True` computes each batch's moments over all
replicas, which would merge the ghost batches: it is rejected together with
`virtual_batch_size`, as are `renorm=True` and masks. (models/norm.py maps a builder's
`bn_synchronized=True` to `synchronized=True` for plain BN and to this option for ghost BN.)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError


def _call_error(message: str) -> UserInputError:
    """A UserInputError that Keras re-raises unchanged from inside `Layer.__call__`.

    Keras' traceback utilities rebuild an exception raised in `call` as
    `type(e)(multi_line_message)` (appending the layer's call arguments); exceptions already
    marked `_keras_call_info_injected` are re-raised as they are, so the message stays one line.
    """
    error = UserInputError(message)
    error._keras_call_info_injected = True
    return error


@keras.saving.register_keras_serializable(package="keras_largebatch")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """Keras `BatchNormalization` with statistics over groups of `virtual_batch_size` samples."""

    def __init__(self, virtual_batch_size: int | None = None, axis: int = -1,
                 sync_moving_statistics: bool = False, **kwargs):
        super().__init__(axis=axis, **kwargs)
        self.sync_moving_statistics = validate.boolean("sync_moving_statistics",
                                                       sync_moving_statistics)
        if virtual_batch_size is not None:
            ok = isinstance(virtual_batch_size, int) and not isinstance(virtual_batch_size, bool)
            if not ok or virtual_batch_size < 1:
                raise UserInputError(
                    f"virtual_batch_size={virtual_batch_size!r} must be a positive integer "
                    "(samples per BN group) or None for plain batch norm"
                )
            if self.synchronized or self.renorm:
                raise UserInputError(
                    f"virtual_batch_size={virtual_batch_size} cannot be combined with "
                    "synchronized=True or renorm=True; drop one of them (for moving "
                    "statistics shared by the replicas use sync_moving_statistics=True)"
                )
        self.virtual_batch_size = virtual_batch_size

    def build(self, input_shape):
        super().build(input_shape)
        if self.virtual_batch_size is not None and self._reduction_axes[0] != 0:
            raise _call_error(
                f"GhostBatchNormalization needs the batch on axis 0 and features elsewhere; "
                f"got axis={self.axis}"
            )

    def get_config(self):
        config = super().get_config()
        config["virtual_batch_size"] = self.virtual_batch_size
        config["sync_moving_statistics"] = self.sync_moving_statistics
        return config

    def _syncing(self) -> bool:
        """Whether moving-statistic updates are all-reduced here (replica context, R > 1)."""
        if not (self.sync_moving_statistics and self.virtual_batch_size) \
                or not tf.distribute.has_strategy():
            return False
        ctx = tf.distribute.get_replica_context()
        return ctx is not None and ctx.num_replicas_in_sync > 1

    def call(self, inputs, training=None, mask=None):
        vbs = self.virtual_batch_size
        if vbs is None or not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None:
            raise _call_error(
                f"GhostBatchNormalization(virtual_batch_size={vbs}) does not support masks; "
                "use virtual_batch_size=None"
            )
        static_batch = inputs.shape[0]
        syncing = self._syncing()
        if static_batch is not None:
            if static_batch <= vbs:
                if syncing:  # one group, so that the update goes through the all-reduce
                    return self._ghost_call(inputs, 1, sync=True)
                return super().call(inputs, training=training)
            if static_batch % vbs:
                raise _call_error(
                    f"batch of {static_batch} does not split into virtual batches of "
                    f"{vbs}; use a batch size that is a multiple of {vbs}"
                )
            return self._ghost_call(inputs, static_batch // vbs, sync=syncing)
        batch = tf.shape(inputs)[0]
        if syncing:  # both branches update through the all-reduce, which must not sit in a cond
            groups = tf.cond(batch <= vbs, lambda: tf.constant(1),
                             lambda: self._checked_groups(batch))
            return self._ghost_call(inputs, groups, sync=True)
        return tf.cond(
            batch <= vbs,
            lambda: super(GhostBatchNormalization, self).call(inputs, training=training),
            lambda: self._ghost_call(inputs, self._checked_groups(batch)),
        )

    def _checked_groups(self, batch):
        vbs = self.virtual_batch_size
        check = tf.debugging.Assert(
            tf.equal(batch % vbs, 0),
            [
                f"GhostBatchNormalization '{self.name}': a batch of",
                batch,
                f"does not split into virtual batches of {vbs}; use a multiple of {vbs}",
            ],
        )
        with tf.control_dependencies([check]):
            return tf.identity(batch // vbs)

    def _ghost_call(self, inputs, groups, sync=False):
        """Training-mode output for `groups` virtual batches (> 1, or 1 when `sync`); updates
        the moving statistics, all-reduced over the replicas when `sync`."""
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = tf.cast(inputs, compute_dtype)
        shape = tf.shape(x)
        # [groups * vbs, ...] -> [groups, vbs, ...]; statistics per group over all axes but the
        # group axis and the feature axis. (One group may be smaller than vbs, hence -1.)
        grouped = tf.reshape(x, tf.concat([[groups, -1], shape[1:]], axis=0))
        ndim = len(inputs.shape)
        feature_axis = self.axis % ndim + 1
        axes = [a for a in range(1, ndim + 1) if a != feature_axis]
        mean, variance = tf.nn.moments(grouped, axes=axes, keepdims=True)

        gamma = tf.cast(self.gamma, compute_dtype) if self.scale else None
        beta = tf.cast(self.beta, compute_dtype) if self.center else None
        if feature_axis != ndim:  # channels-first: broadcast gamma/beta along the feature axis
            bshape = [1] * (ndim + 1)
            bshape[feature_axis] = -1
            gamma = None if gamma is None else tf.reshape(gamma, bshape)
            beta = None if beta is None else tf.reshape(beta, bshape)
        out = tf.nn.batch_normalization(grouped, mean, variance, beta, gamma, self.epsilon)

        self._update_moving(tf.squeeze(mean, axes), tf.squeeze(variance, axes), groups, sync)
        out = tf.reshape(out, shape)
        return tf.cast(out, self.compute_dtype)

    def _update_moving(self, group_means, group_vars, groups, sync=False):
        """Composer's rule in closed form (module docstring); stats are [groups, features].

        With `sync` the increment sum_g w_g stat_g is averaged over the replicas first."""
        n = tf.cast(groups, group_means.dtype)
        a = (1.0 - self.momentum) / n
        keep = 1.0 - a
        # weight of group g: a * keep^(n-1-g)
        powers = n - 1.0 - tf.range(n, dtype=group_means.dtype)
        weights = (a * tf.pow(keep, powers))[:, None]
        old_weight = tf.pow(keep, n)
        increments = [tf.reduce_sum(weights * stats, axis=0) for stats in (group_means,
                                                                          group_vars)]
        if sync:
            increments = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MEAN, increments)
        for var, increment in zip((self.moving_mean, self.moving_variance), increments):
            old = tf.cast(var, increment.dtype)
            var.assign(tf.cast(old_weight * old + increment, var.dtype))
