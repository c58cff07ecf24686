"""Reading a tfds split in worker shards: each worker reads only its share of the examples.

    examples = read_shard(builder, "train", num_shards=W, index=w, seed=s)

Rule: worker w of W reads the sub-split `tfds.even_splits(split, W)[w]` - contiguous,
disjoint ranges of the split whose sizes differ by at most one example and which together
cover the split. tfds turns a sub-split into per-file skip/take instructions, so a worker opens
only the files its range overlaps. With a `seed` the worker's files are read in a seeded order
(`shuffle_files=True`, `ReadConfig(shuffle_seed=seed)`, deterministic interleave); the input
pipeline then shuffles the examples within the share with the same per-epoch seed. Without a
seed the share is read in order (evaluation).

Why sub-splits rather than `ReadConfig(input_context=...)` (file sharding): file shards hold
different numbers of examples, so workers would run different numbers of steps per epoch and
the all-reduce of the longer ones would wait forever for the shorter ones; and file sharding
refuses a split with fewer files than workers (CIFAR-10's train split is one file in some tfds
versions). Even sub-splits give every worker the same number of full global-batch shares
(`steps * B / W <= N // W`), for any number of files.

A W-worker run of such a source is therefore not bitwise equal to a 1-worker run (each worker
permutes only its own share); every epoch still uses each example of a worker's share at most
once, and the shares together cover the split.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

Transform = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def sub_split(split: str, *, num_shards: int, index: int):
    """Worker `index`'s share of `split` (the whole split for one shard)."""
    import tensorflow_datasets as tfds

    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} is not in [0, {num_shards})")
    return split if num_shards == 1 else tfds.even_splits(split, n=num_shards)[index]


def read_shard(builder, split: str, *, num_shards: int, index: int, seed: int | None = None,
               transform: Transform | None = None) -> tf.data.Dataset:
    """Unbatched (image, label) examples of worker `index`'s share of `split`.

    `seed` None reads the share in order; an int reads its files in a seeded order (the same
    order for the same seed, so an epoch can be rebuilt and entered at any step).
    """
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False)
    ds = builder.as_dataset(split=sub_split(split, num_shards=num_shards, index=index),
                            as_supervised=True, shuffle_files=seed is not None,
                            read_config=read_config)
    if transform is not None:
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds
