"""The one input pipeline for every source: shuffle -> batch -> (repeat copies) -> augment.

    dataset_fn = train_dataset_fn(source, global_batch_size=B, epoch=e, seed=s)
    dist = strategy.distribute_datasets_from_function(dataset_fn)

One call builds ONE epoch. The epoch's order is a seeded permutation of the training set
(seed = f(seed, epoch)), so any epoch can be rebuilt exactly and entered at any step
(`skip_steps`) - the basis of exact resume and of batch-size phase changes.

Layout of a step (B = global batch of distinct samples, R replicas, b = B / R):
the step's B permuted indices are cut into R consecutive chunks of b; replica r (global id
r = worker * replicas_per_worker + local) gets chunk r. A 1-replica run and an R-replica run
therefore see the same global batches, and a multi-worker run splits them the same way.
This exact layout holds for in-memory sources and for plain example datasets (every worker
reads the whole set and keeps its chunks).

Sharded readers (`source.sharded_reader`, tfds sources: data/tfds_shards.py) differ: worker w
of W reads only its share of the training set (files in a per-epoch seeded order, examples
shuffled within the share with the epoch's seed) and cuts `steps * B / W` of them into its
replicas' chunks. The global batch is still B (b = B / R per replica, the same number of
steps on every worker), but a W-worker run sees other batches than a 1-worker run. The share
order is a function of (seed, epoch), so `skip_steps` re-enters such an epoch exactly too.

With `repeats=M` (seed 003, batch augmentation) each replica's chunk is tiled M times
(copy-major: [x_0..x_{b-1}, x_0..x_{b-1}, ...]) before augmentation: the replica trains on M*b
examples, all copies of one sample stay on the replica that drew it, and the number of steps
per epoch (N // B) does not depend on M.

Batches are cut with `batch(b)` after `take(steps * B)`, never with a partial final batch, so
the element spec has a `None` batch dimension: one traced train step serves every batch size.

`indices_only=True` (in-memory sources, no repeats or augmentation: data/device_data.py) yields
each replica's chunk of permuted indices instead of its images and labels, with no map: the
step gathers the rows from the training set held on its device. Same chunks, same order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from keras_largebatch.data import device_data
from keras_largebatch.data.sources import DataSource
from keras_largebatch.errors import UserInputError

# augment(images [n,h,w,c] float32 in [0,1], seed int32[2]) -> images; stateless randomness.
Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Updates in one epoch: every sample once, the remainder (< one batch) dropped."""
    return num_examples // global_batch_size


def check_batch_size(
    global_batch_size: int, num_replicas: int, num_examples: int, what: str = "batch size"
) -> None:
    """Raise a one-line UserInputError for a global batch the run cannot use."""
    if (
        isinstance(global_batch_size, bool)
        or not isinstance(global_batch_size, (int, np.integer))
        or global_batch_size < 1
    ):
        raise UserInputError(f"{what} must be a positive integer; got {global_batch_size!r}")
    if global_batch_size % num_replicas:
        raise UserInputError(
            f"global {what} {global_batch_size} is not divisible by the {num_replicas} "
            f"replicas; use a multiple of {num_replicas}"
        )
    if global_batch_size > num_examples:
        raise UserInputError(
            f"global {what} {global_batch_size} is larger than the training set "
            f"({num_examples} examples); use at most {num_examples}"
        )


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch (distinct per epoch, reproducible)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31 - 1)


def _normalizer(source: DataSource):
    mean = tf.constant(source.mean, tf.float32)
    std = tf.constant(source.std, tf.float32)
    return lambda images: (images - mean) / std


def train_dataset_fn(
    source: DataSource,
    *,
    global_batch_size: int,
    epoch: int,
    seed: int,
    skip_steps: int = 0,
    repeats: int = 1,
    augment: Augment | None = None,
    indices_only: bool = False,
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """Return `fn(input_context) -> per-replica batches` for one training epoch.

    Feed it to `strategy.distribute_datasets_from_function`. `skip_steps` enters the epoch
    after that many global steps (resume).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise UserInputError(f"repeats must be an integer >= 1; got {repeats!r}")
    why_not = indices_only and device_data.why_not_on_device(source, repeats=repeats,
                                                             augment=augment)
    if why_not:
        raise ValueError(f"indices_only cannot be used: {why_not}")
    steps = steps_per_epoch(source.num_train, global_batch_size)
    shuffle_seed = epoch_seed(seed, epoch)
    normalize = _normalizer(source)

    def dataset_fn(ctx: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        ctx = ctx or tf.distribute.InputContext()
        replicas = ctx.num_replicas_in_sync
        workers = ctx.num_input_pipelines
        local = replicas // workers
        b = ctx.get_per_replica_batch_size(global_batch_size)

        def chunk_seed(chunk):
            return tf.stack([tf.constant(shuffle_seed, tf.int64), chunk])

        def prepare(chunk, images, labels):
            images = tf.cast(images, tf.float32) / 255.0
            if repeats > 1:
                images = tf.tile(images, [repeats, 1, 1, 1])
                labels = tf.tile(labels, [repeats])
            if augment is not None:
                images = augment(images, tf.cast(chunk_seed(chunk), tf.int32))
            return normalize(images), labels

        if source.sharded_reader:  # this worker's share only
            worker = ctx.input_pipeline_id
            share = source.num_train // workers
            chunks = (
                source.train_shard(workers, worker, shuffle_seed)
                .shuffle(max(1, min(share, 10_000)), seed=shuffle_seed,
                         reshuffle_each_iteration=False)
                .take(steps * (global_batch_size // workers))
                .batch(b)
                .enumerate()
                # local chunk c is local replica c % L of step c // L: number it globally
                .map(lambda c, xy: ((c // local) * replicas + worker * local + c % local, xy))
            )
            gather = lambda c, xy: (c, xy[0], xy[1])  # noqa: E731
        elif source.in_memory:
            indices = (
                tf.data.Dataset.range(source.num_train)
                .shuffle(source.num_train, seed=shuffle_seed, reshuffle_each_iteration=False)
                .take(steps * global_batch_size)
                .batch(b)
            )
            if indices_only:
                return _index_chunks(indices, ctx, skip_steps)
            x = tf.constant(source.train_arrays[0])
            y = tf.constant(source.train_arrays[1])
            chunks = indices.enumerate()
            gather = lambda c, idx: (c, tf.gather(x, idx), tf.gather(y, idx))  # noqa: E731
        else:
            chunks = (
                source.train_examples()
                .shuffle(min(source.num_train, 10_000), seed=shuffle_seed,
                         reshuffle_each_iteration=False)
                .take(steps * global_batch_size)
                .batch(b)
                .enumerate()
            )
            gather = lambda c, xy: (c, xy[0], xy[1])  # noqa: E731
        if workers > 1 and not source.sharded_reader:  # chunk c goes to global replica c % R
            worker = ctx.input_pipeline_id
            chunks = chunks.filter(lambda c, _: (c % replicas) // local == worker)
        chunks = chunks.skip(skip_steps * local)
        ds = chunks.map(lambda c, v: prepare(*gather(c, v)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return _finish(ds)

    return dataset_fn


def _index_chunks(indices: tf.data.Dataset, ctx: tf.distribute.InputContext,
                  skip_steps: int) -> tf.data.Dataset:
    """This worker's replicas' index chunks (`indices_only`): chunk c of the epoch goes to
    global replica c % R, as the images do below; no map on a single worker."""
    replicas, workers = ctx.num_replicas_in_sync, ctx.num_input_pipelines
    local = replicas // workers
    if workers > 1:
        worker = ctx.input_pipeline_id
        indices = (indices.enumerate()
                   .filter(lambda c, _: (c % replicas) // local == worker)
                   .map(lambda c, idx: idx))
    return _finish(indices.skip(skip_steps * local))


def _finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF  # sharded by chunk, above
    )
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
