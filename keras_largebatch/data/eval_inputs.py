"""Evaluation input sharded over workers and replicas: every example evaluated exactly once.

    dataset_fn = eval_dataset_fn(source, split="test", batch_size=1000)
    dist = strategy.distribute_datasets_from_function(dataset_fn)   # training/build.py

Rule (N examples, W workers, L replicas per worker, R = W * L, eval batch B):
- worker w takes its share of the examples: the w-th of W contiguous ranges of the in-memory
  arrays (sizes differ by at most one), its tfds sub-split for sharded readers
  (data/tfds_shards.py), or every W-th example (`Dataset.shard`) of a plain example dataset;
- every worker pads its share with invalid rows (zero images, `valid = False`) to the same
  length `steps * b * L`, b = min(ceil(B / R), ceil(ceil(N / W) / L)) per replica (no larger
  than a replica's share: an eval batch above the split's size is the whole split, not a
  pile of padding rows), steps = ceil(ceil(N / W) / (b * L)), so all replicas of all workers
  run the same number of full batches (no partial batch, no collective waiting for a worker
  that has run out);
- elements are (normalised images, labels, valid); the evaluation sums loss, correct and count
  over valid rows only and all-reduces the sums (SUM), so the totals are the same on every
  worker and each example counts once. With one replica the batches are those of the
  unsharded `eval_dataset` (the last one padded instead of short).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from keras_largebatch import validate
from keras_largebatch.data.sources import DataSource


def _share_of_arrays(arrays, workers: int, worker: int) -> tf.data.Dataset:
    """Contiguous range `worker` of `workers`; the first N % W ranges hold one more."""
    n = len(arrays[0])
    lo = worker * (n // workers) + min(worker, n % workers)
    hi = lo + n // workers + (1 if worker < n % workers else 0)
    return tf.data.Dataset.from_tensor_slices((arrays[0][lo:hi], arrays[1][lo:hi]))


def _share(source: DataSource, split: str, workers: int, worker: int) -> tf.data.Dataset:
    """Worker `worker`'s unbatched (uint8 image, int label) examples of `split`."""
    if source.in_memory:
        arrays = source.test_arrays if split == "test" else source.train_arrays
        return _share_of_arrays(arrays, workers, worker)
    if source.sharded_reader:
        return (source.test_shard(workers, worker) if split == "test"
                else source.train_shard(workers, worker, None))
    examples = source.test_examples() if split == "test" else source.train_examples()
    return examples.shard(workers, worker) if workers > 1 else examples


def eval_dataset_fn(source: DataSource, *, split: str = "test", batch_size: int = 1000
                    ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """`fn(input_context) -> (images, labels, valid)` per-replica batches of this worker's
    padded share of `split` ("test" or "train"); see the module docstring."""
    validate.one_of("eval split", split, ("test", "train"))
    batch_size = validate.whole("train.eval_batch_size", batch_size, minimum=1)
    num = source.num_test if split == "test" else source.num_train
    mean = tf.constant(source.mean, tf.float32)
    std = tf.constant(source.std, tf.float32)

    def dataset_fn(ctx: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        ctx = ctx or tf.distribute.InputContext()
        workers, replicas = ctx.num_input_pipelines, ctx.num_replicas_in_sync
        local = replicas // workers
        share = math.ceil(num / workers)  # the largest worker share
        b = max(1, min(math.ceil(batch_size / replicas), math.ceil(share / local)))
        steps = max(1, math.ceil(share / (b * local)))
        padding = tf.data.Dataset.from_tensors(
            (tf.zeros(source.input_shape, tf.uint8), tf.constant(0, tf.int32), False)).repeat()
        ds = (
            _share(source, split, workers, ctx.input_pipeline_id)
            .map(lambda x, y: (x, tf.cast(y, tf.int32), True))
            .concatenate(padding)
            .take(steps * b * local)
            .batch(b)
            .map(lambda x, y, valid: ((tf.cast(x, tf.float32) / 255.0 - mean) / std, y, valid),
                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF  # sharded above, by worker
        )
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return dataset_fn
