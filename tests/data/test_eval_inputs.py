"""Sharded evaluation input: each example in exactly one valid row over all workers and
replicas; every replica gets the same number of batches; padding rows are marked invalid.

Image i stores i in two pixels (as in test_pipeline.py), so the rows are read back as ids."""

import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.data import DataSource
from keras_largebatch.data.eval_inputs import eval_dataset_fn
from keras_largebatch.errors import UserInputError


def _index_source(n_train=120, n_test=203):
    def arrays(n):
        idx = np.arange(n)
        images = np.zeros((n, 4, 4, 1), np.uint8)
        images[:, 0, 0, 0], images[:, 0, 1, 0] = idx // 256, idx % 256
        return images, (idx % 10).astype(np.int32)
    return DataSource(name="index", input_shape=(4, 4, 1), num_classes=10, num_train=n_train,
                      num_test=n_test, mean=(0.0,), std=(1.0,), train_arrays=arrays(n_train),
                      test_arrays=arrays(n_test))


def _rows(source, workers, replicas, **kw):
    """Per worker: list of (ids, labels, valid) per-replica batches."""
    fn = eval_dataset_fn(source, **kw)
    out = []
    for w in range(workers):
        batches = []
        for x, y, valid in fn(tf.distribute.InputContext(workers, w, replicas)):
            px = np.rint(x.numpy() * 255).astype(int)
            batches.append((px[:, 0, 0, 0] * 256 + px[:, 0, 1, 0], y.numpy(), valid.numpy()))
        out.append(batches)
    return out


@pytest.mark.parametrize("workers,replicas,batch,b", [
    (1, 1, 50, 50), (1, 2, 50, 25), (2, 2, 50, 25), (2, 4, 64, 16),
    # batch above the split: a replica's batch is its share, 68 = ceil(203 / 3) (not 334)
    (3, 3, 1000, 68), (2, 4, 10**20, 51)])  # 51 = ceil(ceil(203 / 2) / 2 local replicas)
def test_every_example_in_exactly_one_valid_row(workers, replicas, batch, b):
    src = _index_source()
    per_worker = _rows(src, workers, replicas, batch_size=batch)
    valid_ids = np.concatenate([ids[v] for batches in per_worker for ids, _, v in batches])
    np.testing.assert_array_equal(np.sort(valid_ids), np.arange(src.num_test))
    for batches in per_worker:  # same number of full batches on every worker
        assert len(batches) == len(per_worker[0]) and len(batches) % (replicas // workers) == 0
        assert all(len(ids) == b for ids, _, _ in batches)
        for ids, labels, valid in batches:
            np.testing.assert_array_equal(labels[valid], ids[valid] % 10)
            assert not ids[~valid].any()  # padding rows are zero images


def test_one_replica_batches_are_the_unsharded_batches_plus_padding():
    src = _index_source()
    (batches,) = _rows(src, 1, 1, batch_size=50)
    assert [int(v.sum()) for _, _, v in batches] == [50, 50, 50, 50, 3]
    np.testing.assert_array_equal(np.concatenate([i for i, _, _ in batches])[:203],
                                  np.arange(203))


def test_the_train_split_and_bad_arguments():
    src = _index_source()
    (batches,) = _rows(src, 1, 2, split="train", batch_size=1000)
    assert sorted(np.concatenate([i[v] for i, _, v in batches])) == list(range(120))
    with pytest.raises(UserInputError, match="'validation'"):
        eval_dataset_fn(src, split="validation")
    with pytest.raises(UserInputError, match="eval_batch_size=0 must be >= 1"):
        eval_dataset_fn(src, batch_size=0)
