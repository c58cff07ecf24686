"""An in-memory training set held on each replica's device; the step gathers its batches.

    data = DeviceData.create(source, strategy)        # once per run, normalised float32
    dataset_fn = train_dataset_fn(..., indices_only=True)   # the pipeline yields indices
    images, labels = data.lookup(indices, data_on_this_replica)  # inside the replica step

Why: the pipeline's map (gather, cast, scale, normalise) runs once per batch in `tf.data`,
and on a fast step its machinery (the map call, the prefetch hand-over between threads), not
its arithmetic, is what costs: ~200 us per batch of 32 measured beside a ~1.1 ms step
(BUILD_NOTES "Many updates per call"). Holding the training set on the device, normalised
once, the pipeline hands over only the permuted index chunks and the step gathers the rows.

The same batches, to the bit: the indices are the pipeline's own (same seeded permutation,
same chunk per replica, same `skip_steps`), and the images are normalised by the pipeline's
own operations, x = (float32(u8) / 255 - mean) / std, computed eagerly here; eager float32
arithmetic gives the map's bits (tests/data/test_device_data.py checks every batch of an
epoch, and whole runs' weights, against the map).

Where it applies (`why_not_on_device` names what stops it): in-memory sources only, without
seed-003 repeats or augmentation (those run per batch in the map). Memory: the normalised set,
float32, on every local replica's device (Fashion-MNIST: 55-60k x 784 x 4 B = 172-188 MB each);
`train.inputs_on_device = 'auto'` holds it there only up to `AUTO_MAX_BYTES` per replica.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from keras_largebatch.data.sources import DataSource

AUTO_MAX_BYTES = 1 << 30  # 1 GiB of normalised images per replica's device


def why_not_on_device(source: DataSource, *, repeats: int, augment) -> str | None:
    """None where the training set can be held on the device; else why not (one phrase)."""
    if not source.in_memory:
        return f"the {source.name} training set is not held in memory"
    if repeats != 1:
        return f"train.repeats = {repeats} copies are made per batch in the input pipeline"
    if augment is not None:
        return "augmentation runs per batch in the input pipeline"
    return None


def normalized_bytes(source: DataSource) -> int:
    """Bytes of the normalised float32 training images on one device."""
    return int(np.prod(source.train_arrays[0].shape)) * 4


def normalize(source: DataSource, images) -> tf.Tensor:
    """(float32(u8) / 255 - mean) / std: the input pipeline's operations, in its order."""
    mean = tf.constant(source.mean, tf.float32)
    std = tf.constant(source.std, tf.float32)
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


@dataclasses.dataclass
class DeviceData:
    """Per-replica (images, labels) tensors, placed on each local replica's device."""

    images: object  # a PerReplica value (or one tensor under the default strategy)
    labels: object

    @classmethod
    def create(cls, source: DataSource, strategy: tf.distribute.Strategy) -> DeviceData:
        x, y = source.train_arrays
        try:
            devices = strategy.extended.worker_devices
        except RuntimeError:  # the default strategy: the default device
            devices = None

        def on_replica(ctx, host_value):
            if devices is None:
                return tf.identity(host_value)
            with tf.device(devices[ctx.replica_id_in_sync_group % len(devices)]):
                return tf.identity(host_value)

        with tf.device("/cpu:0"):  # normalised once on the host, then copied to each device
            images = normalize(source, x)
            labels = tf.constant(y)
        return cls(
            images=strategy.experimental_distribute_values_from_function(
                lambda ctx: on_replica(ctx, images)),
            labels=strategy.experimental_distribute_values_from_function(
                lambda ctx: on_replica(ctx, labels)))

    @staticmethod
    def lookup(indices, images, labels) -> tuple[tf.Tensor, tf.Tensor]:
        """Replica context: this replica's batch, rows `indices` of its device's copy."""
        return tf.gather(images, indices), tf.gather(labels, indices)
