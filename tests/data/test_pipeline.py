"""The pipeline builder: epochs are seeded permutations, resumable, split across replicas
and workers the same way, with a None batch dimension.

A fixture source whose image i stores i in two pixels makes every check exact: we read the
sample indices back out of the batches and compare with brute-force expectations.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.data import DataSource, check_batch_size, train_dataset_fn
from keras_largebatch.errors import UserInputError

N = 600


def _index_source(n=N):
    idx = np.arange(n)
    images = np.zeros((n, 4, 4, 1), np.uint8)
    images[:, 0, 0, 0] = idx // 256
    images[:, 0, 1, 0] = idx % 256
    return DataSource(name="index", input_shape=(4, 4, 1), num_classes=10, num_train=n,
                      num_test=n, mean=(0.0,), std=(1.0,), train_arrays=(images, idx % 10),
                      test_arrays=(images, idx % 10))


def _indices(images) -> np.ndarray:
    px = np.rint(np.asarray(images) * 255).astype(int)
    return px[:, 0, 0, 0] * 256 + px[:, 0, 1, 0]


def _epoch(source, **kw):
    return [_indices(x) for x, _ in train_dataset_fn(source, **kw)()]


def test_epoch_is_a_seeded_permutation_and_labels_follow():
    src = _index_source()
    batches = _epoch(src, global_batch_size=64, epoch=0, seed=1)
    assert len(batches) == N // 64 and all(len(b) == 64 for b in batches)
    flat = np.concatenate(batches)
    assert len(set(flat)) == len(flat) == (N // 64) * 64  # no sample twice; remainder dropped
    for x, y in train_dataset_fn(src, global_batch_size=64, epoch=0, seed=1)():
        np.testing.assert_array_equal(y.numpy(), _indices(x) % 10)
    again = _epoch(src, global_batch_size=64, epoch=0, seed=1)
    np.testing.assert_array_equal(np.concatenate(again), flat)
    other_epoch = np.concatenate(_epoch(src, global_batch_size=64, epoch=1, seed=1))
    assert not np.array_equal(other_epoch, flat)


def test_skip_steps_enters_the_epoch_exactly():
    src = _index_source()
    full = _epoch(src, global_batch_size=50, epoch=3, seed=0)
    resumed = _epoch(src, global_batch_size=50, epoch=3, seed=0, skip_steps=5)
    assert len(resumed) == len(full) - 5
    np.testing.assert_array_equal(np.concatenate(resumed), np.concatenate(full[5:]))


def test_batch_dimension_is_dynamic():
    spec = train_dataset_fn(_index_source(), global_batch_size=64, epoch=0,
                            seed=0)().element_spec
    assert spec[0].shape.as_list() == [None, 4, 4, 1] and spec[1].shape.as_list() == [None]


def test_two_replicas_split_each_global_batch_in_order(two_cpu_strategy):
    src = _index_source()
    single = _epoch(src, global_batch_size=64, epoch=0, seed=2)
    dist = two_cpu_strategy.distribute_datasets_from_function(
        train_dataset_fn(src, global_batch_size=64, epoch=0, seed=2))
    it = iter(dist)
    for expected in single:
        x, _ = next(it)
        parts = two_cpu_strategy.experimental_local_results(x)
        assert [len(p) for p in parts] == [32, 32]
        np.testing.assert_array_equal(np.concatenate([_indices(p) for p in parts]), expected)


def test_workers_take_their_replicas_chunks():
    """2 workers x 2 replicas: worker w gets chunks of global replicas 2w and 2w+1."""
    src = _index_source()
    single = _epoch(src, global_batch_size=40, epoch=0, seed=5)
    fn = train_dataset_fn(src, global_batch_size=40, epoch=0, seed=5)
    per_worker = [
        [_indices(x) for x, _ in fn(tf.distribute.InputContext(2, w, 4))] for w in range(2)
    ]
    for step, expected in enumerate(single):
        chunks = [per_worker[w][2 * step + r] for w in range(2) for r in range(2)]
        assert all(len(c) == 10 for c in chunks)
        np.testing.assert_array_equal(np.concatenate(chunks), expected)


def test_repeats_tile_each_replica_chunk_and_keep_steps(two_cpu_strategy):
    src = _index_source()
    plain = _epoch(src, global_batch_size=32, epoch=0, seed=0)
    rep = _epoch(src, global_batch_size=32, epoch=0, seed=0, repeats=4)
    assert len(rep) == len(plain)  # updates per epoch do not depend on M
    for p, r in zip(plain, rep):
        np.testing.assert_array_equal(r, np.tile(p, 4))
    dist = two_cpu_strategy.distribute_datasets_from_function(
        train_dataset_fn(src, global_batch_size=32, epoch=0, seed=0, repeats=4))
    x, _ = next(iter(dist))
    for r, part in enumerate(two_cpu_strategy.experimental_local_results(x)):
        np.testing.assert_array_equal(_indices(part), np.tile(plain[0][16 * r:16 * (r + 1)], 4))


@pytest.mark.parametrize("batch,replicas,match", [
    (0, 1, "positive integer; got 0"),
    (2.5, 1, "positive integer; got 2.5"),
    (65, 2, "65 is not divisible by the 2 replicas"),
    (601, 1, r"601 is larger than the training set \(600"),
])
def test_bad_batch_sizes(batch, replicas, match):
    with pytest.raises(UserInputError, match=match):
        check_batch_size(batch, replicas, N)


def test_bad_repeats():
    with pytest.raises(UserInputError, match="repeats must be an integer >= 1; got 0"):
        train_dataset_fn(_index_source(), global_batch_size=8, epoch=0, seed=0, repeats=0)
