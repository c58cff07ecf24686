"""Ghost batch normalization: BN statistics over virtual batches, not the whole batch.

    x = GhostBatchNormalization(virtual_batch_size=32)(x)     # per-replica batch 256 -> 8 groups

Hoffer et al. 2017 ("Train longer, generalize better") normalise each slice of
`virtual_batch_size` consecutive samples with that slice's own mean and (biased) variance; seed
001 Section 3.6 finds the best BN batch (4-8) nearly independent of the SGD batch, and seed 003
uses ghost BN for its large batches. Keras 3's `BatchNormalization` has no `virtual_batch_size`,
so this layer subclasses it: same weights (gamma, beta, moving_mean, moving_variance), same
config plus `virtual_batch_size`, same inference path. Written in `keras.ops`: TensorFlow, JAX
and PyTorch.

**Groups, for any batch size B.** Sample i belongs to group floor(i / v), v =
`virtual_batch_size`, so there are n = ceil(B / v) groups: n - 1 of v samples and a last one of
B - (n - 1) v samples (B mod v when B is not a multiple of v, e.g. Keras' remainder batch at the
end of an epoch). Training with n > 1 groups, for each feature:

    y = gamma * (x - mean_g) / sqrt(var_g + epsilon) + beta        inside group g

**Masks** (one dimension less than the inputs, as for Keras' BatchNormalization) weight the
moments exactly as Keras does: masked positions are excluded from each group's mean and
variance, mean_g = sum(m x) / (sum(m) + eps_K), var_g = sum(m (x - mean_g)^2) / (sum(m) + eps_K)
with eps_K = `keras.backend.epsilon()`; every position, masked or not, is normalised.

**Moving statistics** are updated the way Composer's `GhostBatchNorm` does it: Composer runs
the wrapped BN once per chunk, in order (its last chunk may be smaller), after dividing
PyTorch's momentum (the weight of the new statistic) by the number of chunks. In Keras'
convention (momentum = weight of the old value) that is n sequential updates

    moving <- moving * (1 - a) + stat_g * a,   a = (1 - momentum) / n,   g = 0 .. n-1,

applied here in closed form, moving <- (1 - a)^n moving + sum_g a (1 - a)^(n-1-g) stat_g. Per
training step the old value keeps weight (1 - (1 - momentum)/n)^n ~ momentum, so the moving
averages forget at the rate Keras' BatchNormalization would, and they estimate the statistics
of a *virtual* batch, which is what inference should use to match training-time normalisation.
`stat_g` is the biased group variance, as Keras BN uses the biased batch variance.

**How the groups are formed, XLA included.** No segment ops (TensorFlow's SegmentSum has no
XLA kernel). A batch size known when the layer is traced (JAX, PyTorch, a static TF batch):
one reshape to [B // v, v, ...] for the full groups (Keras' `ops.moments` per group), and a
slice of its own for a remainder group. A dynamic TF batch (`None`, as in the framework loop
and model.fit on TensorFlow) is one graph for every B: per-sample sums over the non-feature
axes, grouped and broadcast back by products with the one-hot membership matrix
M[i, g] = [i // v = g] ([B, n] x [B, C] matmuls, small next to the activations). Under XLA
(`jit_compile=True`) each batch size is compiled with static shapes; no shape or bound of
either path exists only as a value, so forward and backward compile for every B, also inside
the `cond` below. (A `cond` between a reshape and a split for the remainder compiled too, but
tripled the first-call graph time of a ResNet-20: BUILD_NOTES "XLA where users turn it on".)

`virtual_batch_size=None`, or a batch no larger than `virtual_batch_size` (one group), runs
Keras' `BatchNormalization.call` itself, masks included (`ops.cond` when the batch is dynamic),
so the result is bit-identical to BatchNormalization. The batch axis (0) is split; `axis` is the
feature axis as in Keras.

Under `tf.distribute` the batch seen here is the per-replica batch, and by default (as in
Keras' BN with `synchronized=False`) each replica updates its own copy of the moving
statistics, so the copies drift apart and inference depends on the replica it runs on.

`sync_moving_statistics=True` (TensorFlow distribution strategies) synchronises the moving
statistics only: the training-mode output stays normalised per ghost batch *on each replica*
(the point of ghost BN, Hoffer et al. 2017; seed 001 Section 3.6: the BN batch is set apart
from the SGD batch, and a cross-replica BN batch would be the opposite), while each replica's
update increment sum_g a (1 - a)^(n-1-g) stat_g is all-reduced (MEAN) over the replicas in
sync before it is applied. All copies start equal and receive the same update, so they stay
identical; the moving statistics become the average over every replica's ghost batches, the
estimate that inference should use. One all-reduce of 2 x features floats per layer and step;
nothing is exchanged with one replica or outside a replica context (and never on JAX or
PyTorch, which have no replica context here). With synchronisation, a per-replica batch no
larger than `virtual_batch_size` is one group of the same rule, so its statistics are
synchronised too. Keras' own `synchronized=True` computes each batch's moments over all
replicas, which would merge the ghost batches: it is rejected together with
`virtual_batch_size`, as is `renorm=True`. (models/norm.py maps a builder's
`bn_synchronized=True` to `synchronized=True` for plain BN and to this option for ghost BN.)
"""

from __future__ import annotations

import keras
from keras import ops

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

    def _replica_context(self):
        """The TF replica context whose moving-statistic updates are all-reduced, or None.

        Only with `sync_moving_statistics`, the TensorFlow backend, a distribution strategy
        and more than one replica in sync.
        """
        if not (self.sync_moving_statistics and self.virtual_batch_size) \
                or keras.backend.backend() != "tensorflow":
            return None
        import tensorflow as tf

        if not tf.distribute.has_strategy():
            return None
        ctx = tf.distribute.get_replica_context()
        return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None

    def call(self, inputs, training=None, mask=None):
        vbs = self.virtual_batch_size
        if vbs is None or not (training and self.trainable):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise _call_error(
                "The mask provided should be one dimension less than the inputs. Received: "
                f"mask.shape={tuple(mask.shape)}, inputs.shape={tuple(inputs.shape)}"
            )
        static_batch = inputs.shape[0]
        ctx = self._replica_context()
        if ctx is not None:  # every batch goes through the all-reduce (not inside a cond)
            return self._ghost_call(inputs, mask, static_batch, ctx)
        if static_batch is not None:
            if static_batch <= vbs:
                return super().call(inputs, training=training, mask=mask)
            return self._ghost_call(inputs, mask, static_batch)
        return ops.cond(
            ops.shape(inputs)[0] <= vbs,
            lambda: super(GhostBatchNormalization, self).call(inputs, training=True, mask=mask),
            lambda: self._ghost_call(inputs, mask, None),
        )

    def _ghost_call(self, inputs, mask, static_batch, ctx=None):
        """Training-mode output over ceil(B / v) virtual batches (module docstring); updates
        the moving statistics, all-reduced over the replicas when `ctx` is given."""
        vbs = self.virtual_batch_size
        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, compute_dtype)
        weights = None
        if mask is not None:
            weights = ops.cast(ops.broadcast_to(ops.expand_dims(mask, -1), ops.shape(x)), "bool")
        if static_batch is not None:  # JAX, PyTorch, a static TF batch: shapes known here
            out, *update = self._static_groups(x, weights, *divmod(static_batch, vbs))
        else:  # a dynamic batch (TensorFlow only)
            batch = ops.shape(x)[0]
            out, *update = self._member_groups(x, weights, batch)
        self._assign_moving(*update, ctx)
        return ops.cast(out, self.compute_dtype)

    def _rest(self, x):
        """The non-batch dimensions of `x` (static where known)."""
        return [ops.shape(x)[a] if d is None else d for a, d in enumerate(x.shape) if a]

    def _finish(self, outputs, means, variances):
        """(output, mean increment, variance increment, old weight) from the pieces."""
        if len(outputs) > 1:
            outputs = [ops.concatenate(outputs, axis=0)]
            means, variances = [ops.concatenate(means, 0)], [ops.concatenate(variances, 0)]
        return (outputs[0], *self._moving_increments(means[0], variances[0]))

    def _static_groups(self, x, weights, full, remainder):
        """`full` groups of v samples, one reshape to [full, v, ...], then (remainder > 0) a
        last group of the `remainder` samples after them, sliced off (static sizes: JAX,
        PyTorch, a static TF batch)."""
        vbs, rest = self.virtual_batch_size, self._rest(x)
        size = full * vbs
        pieces = [(x, weights, full, vbs)]
        if remainder:
            pieces = [(x[:size], None if weights is None else weights[:size], full, vbs),
                      (x[size:], None if weights is None else weights[size:], 1, remainder)]
        results = [self._normalize(values, w, groups, members, rest)
                   for values, w, groups, members in pieces if groups]
        return self._finish(*zip(*results))

    def _member_groups(self, x, weights, batch):
        """Any (dynamic) B in one graph: per-sample sums over the non-batch, non-feature axes,
        then group sums and the broadcast back to samples as products with the one-hot
        membership matrix M [B, n] (sample i in group i // v) -- small [B, C] x [B, n]
        matmuls, which XLA compiles for every B, forward and backward, inside a `cond` too.
        The moments are Keras' (masked) moments of each group; without a mask, as
        tf.nn.moments does, the variance is taken around a mean held constant for the gradient
        (the same gradient: d var / d mean = 0)."""
        vbs = self.virtual_batch_size
        ndim = len(x.shape)
        feature = self.axis % ndim
        other = [a for a in range(1, ndim) if a != feature]
        channels = x.shape[feature]
        dtype = x.dtype
        groups = (batch + vbs - 1) // vbs
        members = ops.one_hot(ops.arange(batch) // vbs, groups, dtype=dtype)  # M [B, n]

        def per_sample(t):  # [B, ...] -> [B, C]
            t = ops.sum(t, axis=other) if other else t
            return ops.reshape(t, [-1, channels])

        def to_samples(per_group):  # [n, C] -> broadcastable to x
            rows = ops.matmul(members, per_group)
            return ops.reshape(rows, [-1] + [channels if a == feature else 1
                                             for a in range(1, ndim)])

        if weights is None:
            size = 1
            for a in other:
                size = size * ops.shape(x)[a]
            counts = ops.expand_dims(ops.sum(members, axis=0), -1) * ops.cast(size, dtype)
            sums = per_sample(x)
        else:
            counts = ops.matmul(ops.transpose(members), per_sample(ops.cast(weights, dtype)))
            counts = counts + keras.backend.epsilon()
            sums = per_sample(ops.where(weights, x, 0))
        mean = ops.matmul(ops.transpose(members), sums) / counts
        if weights is None:
            diff = x - to_samples(ops.stop_gradient(mean))
        else:  # Keras' masked moments differentiate through the mean
            diff = ops.where(weights, x - to_samples(mean), 0)
        variance = ops.matmul(ops.transpose(members), per_sample(ops.square(diff))) / counts
        inv = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * ops.cast(self.gamma, dtype)
        shift = -mean * inv
        if self.center:
            shift = shift + ops.cast(self.beta, dtype)
        out = x * to_samples(inv) + to_samples(shift)
        return (out, *self._moving_increments(mean, variance))

    def _normalize(self, x, weights, groups, members, rest):
        """Batch norm of [groups * members, ...] samples per group of `members`: (output
        [groups * members, ...], group means [groups, C], group biased variances [groups, C])."""
        shape = [groups, members] + rest
        xg = ops.reshape(x, shape)
        feature = self.axis % (len(rest) + 1) + 1
        axes = [a for a in range(1, len(shape)) if a != feature]
        if weights is None:  # Keras' BN moments (tf.nn.moments on TensorFlow), per group
            mean, variance = ops.moments(xg, axes, keepdims=True)
        else:  # Keras' masked moments, per group
            wg = ops.reshape(weights, shape)
            total = ops.sum(ops.cast(wg, xg.dtype), axes, keepdims=True) + keras.backend.epsilon()
            mean = ops.sum(ops.where(wg, xg, 0), axes, keepdims=True) / total
            variance = ops.sum(ops.square(ops.where(wg, xg - mean, 0)), axes, keepdims=True)
            variance = variance / total
        inv = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * self._feature_view(self.gamma, feature, len(shape), xg.dtype)
        shift = -mean * inv
        if self.center:
            shift = shift + self._feature_view(self.beta, feature, len(shape), xg.dtype)
        out = xg * inv + shift  # as tf.nn.batch_normalization: x * inv + (beta - mean * inv)
        channels = x.shape[feature - 1]
        return (ops.reshape(out, [-1] + rest), ops.reshape(mean, [-1, channels]),
                ops.reshape(variance, [-1, channels]))

    @staticmethod
    def _feature_view(weight, feature, ndim, dtype):
        return ops.reshape(ops.cast(weight, dtype), [-1 if a == feature else 1
                                                     for a in range(ndim)])

    def _moving_increments(self, group_means, group_vars):
        """Composer's rule in closed form (module docstring) for stats [groups, features]:
        (sum_g w_g mean_g, sum_g w_g var_g, (1 - a)^n)."""
        dtype = group_means.dtype
        count = ops.shape(group_means)[0]
        n = ops.cast(count, dtype)
        a = (1.0 - self.momentum) / n
        keep = 1.0 - a
        # weight of group g: a * keep^(n-1-g)
        powers = n - 1.0 - ops.cast(ops.arange(count), dtype)
        weights = ops.expand_dims(a * ops.power(keep, powers), -1)
        return (ops.sum(weights * group_means, axis=0), ops.sum(weights * group_vars, axis=0),
                ops.power(keep, n))

    def _assign_moving(self, mean_increment, var_increment, old_weight, ctx=None):
        """moving <- (1 - a)^n moving + increment; with a replica context `ctx` the
        increments are averaged over the replicas first."""
        increments = [mean_increment, var_increment]
        if ctx is not None:
            import tensorflow as tf

            increments = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, increments)
        for var, increment in zip((self.moving_mean, self.moving_variance), increments):
            old = ops.cast(var, increment.dtype)
            var.assign(ops.cast(old_weight * old + increment, var.dtype))
