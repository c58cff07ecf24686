"""Sharded tfds sources: each worker reads only its share, in a per-epoch seeded order.

Two kinds of tfds data, both written or generated on this machine (nothing is downloaded):
- a tiny dataset prepared with tfds into 4 files (real tfds reading: sub-splits turned into
  per-file instructions, seeded file order), whose image i stores its id i in two pixels;
- `tfds.testing.mock_data` for the named CIFAR source. Mock data ignores the split it is asked
  for (every sub-split would yield the same examples), so its `as_dataset_fn` here honours the
  sub-split the way tfds does: examples from_..to of the split, id in the pixels.

Two workers are simulated with two `tf.distribute.InputContext`s (no processes).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_largebatch.data import eval_dataset_fn, get_source, train_dataset_fn
from keras_largebatch.data.sources import _tfds_sharded
from keras_largebatch.training.build import evaluate_fn
from keras_largebatch.training.loop import train

N_TRAIN, N_TEST = 100, 37


def _image(i, shape=(4, 4, 1)):
    img = np.zeros(shape, np.uint8)
    img[0, 0, 0], img[0, 1, 0] = i // 256, i % 256
    return img


def _ids(images, mean=0.0, std=1.0) -> list[int]:
    """Ids back out of uint8 images, or of pipeline images normalised with (mean, std)."""
    x = np.asarray(images)
    px = x.astype(int) if x.dtype == np.uint8 else np.rint((x * std + mean) * 255).astype(int)
    return [int(i) for i in px[:, 0, 0, 0] * 256 + px[:, 0, 1, 0]]


class ShardIds(tfds.core.GeneratorBasedBuilder):
    """Example i: image with i in two pixels, label i % 10."""

    VERSION = tfds.core.Version("1.0.0")
    # A one-part module name makes tfds treat the class as defined interactively (no code path
    # looked up in a package; that lookup needs `importlib_resources`, absent here).
    __module__ = "shard_ids"

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(N_TRAIN),
                "test": self._generate_examples(N_TEST)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": _image(i), "label": i % 10}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    ShardIds(data_dir=path).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=4))
    return path


@pytest.fixture(scope="module")
def source(data_dir):
    return _tfds_sharded("shard_ids", data_dir, ("train", "test"), input_shape=(4, 4, 1),
                         num_classes=10, mean=(0.0,), std=(1.0,))


def _share(source, workers, worker, seed=None):
    return [i for x, _ in source.train_shard(workers, worker, seed).as_numpy_iterator()
            for i in _ids(x[None])]


def test_the_dataset_has_several_files(data_dir):
    splits = tfds.builder("shard_ids", data_dir=data_dir).info.splits
    assert splits["train"].num_shards == 4 and splits["train"].num_examples == N_TRAIN


def test_worker_shares_are_disjoint_and_cover_the_split(source):
    shares = [_share(source, 2, w, seed=3) for w in range(2)]
    assert [len(s) for s in shares] == [50, 50]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(N_TRAIN))
    odd = [_share(source, 3, w) for w in range(3)]  # 100 = 34 + 33 + 33
    assert sorted(len(s) for s in odd) == [33, 33, 34]
    assert sorted(sum(odd, [])) == list(range(N_TRAIN))


def test_share_order_is_a_function_of_the_seed(source):
    # tfds shuffles the share's files with the op seed combined with TensorFlow's global seed,
    # which other tests in this process may have set: fix it. And a share of 2 workers holds 2
    # files, so two seeds give the same order half the time (seeds 7 and 8 did, in one suite
    # run): another seed must change the order for some seed among several, not for one.
    tf.random.set_seed(0)
    first = _share(source, 2, 0, seed=7)
    assert _share(source, 2, 0, seed=7) == first
    other = _share(source, 2, 0, seed=8)
    assert sorted(other) == sorted(first)
    orders = {tuple(_share(source, 2, 0, seed=s)) for s in range(7, 17)}
    assert len(orders) > 1 and all(sorted(o) == sorted(first) for o in orders)
    whole = {tuple(_share(source, 1, 0, seed=s)) for s in range(7, 17)}  # 4 files
    assert len(whole) > 2 and all(sorted(o) == list(range(N_TRAIN)) for o in whole)


def _worker_epoch(source, worker, *, workers=2, replicas=2, epoch=0, skip_steps=0, batch=20):
    ctx = tf.distribute.InputContext(workers, worker, replicas)
    fn = train_dataset_fn(source, global_batch_size=batch, epoch=epoch, seed=1,
                          skip_steps=skip_steps)
    out = []
    for x, y in fn(ctx):
        np.testing.assert_array_equal(y.numpy(), np.array(_ids(x)) % 10)  # labels follow
        out.append(_ids(x))
    return out


def test_two_workers_read_disjoint_examples_that_cover_the_epoch(source):
    per_worker = [_worker_epoch(source, w, replicas=4) for w in range(2)]
    # 100 examples, global batch 20, 4 replicas: 5 steps x 2 local replicas x 5 examples
    assert all(len(chunks) == 10 and all(len(c) == 5 for c in chunks) for chunks in per_worker)
    seen = [sum(chunks, []) for chunks in per_worker]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(N_TRAIN))
    for w in range(2):  # each worker draws from its own share only
        assert set(seen[w]) == set(_share(source, 2, w))


def test_epochs_reorder_the_share_and_resume_enters_it_exactly(source):
    full = _worker_epoch(source, 1)
    assert _worker_epoch(source, 1) == full
    resumed = _worker_epoch(source, 1, skip_steps=3)  # 1 local replica: one chunk per step
    assert resumed == full[3:]
    next_epoch = _worker_epoch(source, 1, epoch=1)
    assert next_epoch != full and sorted(sum(next_epoch, [])) == sorted(sum(full, []))


def test_one_worker_reads_the_whole_set(source):
    chunks = _worker_epoch(source, 0, workers=1, replicas=1, batch=25)
    assert [len(c) for c in chunks] == [25] * 4
    assert sorted(sum(chunks, [])) == list(range(N_TRAIN))


# ---- the named CIFAR source under tfds' mock data -----------------------------------------

def _sub_split_mock(n):
    """`as_dataset_fn` for mock_data that serves examples from_..to of the requested split."""
    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        instruction = tfds.core.ReadInstruction.from_spec(split)
        infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
                 for name in ("train", "test")}
        ids = [i for a in instruction.to_absolute(infos)
               for i in range(a.from_ or 0, n if a.to is None else a.to)]
        images = np.stack([_image(i, (32, 32, 3)) for i in ids])
        return tf.data.Dataset.from_tensor_slices(
            {"id": tf.constant([str(i) for i in ids]), "image": images,
             "label": np.array(ids, np.int64) % 10})
    return as_dataset


def test_cifar10_sharded_reader_under_mock_data():
    with tfds.testing.mock_data(num_examples=90, as_dataset_fn=_sub_split_mock(90)):
        s = get_source("cifar10", sharded_reader=True)
        assert s.sharded_reader and s.num_train == 90 and s.input_shape == (32, 32, 3)
        per_worker = []
        for w in range(2):
            fn = train_dataset_fn(s, global_batch_size=20, epoch=0, seed=0)
            per_worker.append([i for x, _ in fn(tf.distribute.InputContext(2, w, 2))
                               for i in _ids(x, s.mean[0], s.std[0])])
    # 90 examples, batch 20: 4 steps of 10 per worker, from shares of 45 each
    assert [len(p) for p in per_worker] == [40, 40]
    assert not set(per_worker[0]) & set(per_worker[1])
    assert set(per_worker[0]) <= set(range(45)) and set(per_worker[1]) <= set(range(45, 90))


def test_cifar10_stays_in_memory_by_default():
    with tfds.testing.mock_data(num_examples=64):
        s = get_source("cifar10")
    assert s.in_memory and not s.sharded_reader


def test_sharded_evaluation_covers_the_test_split_once(source):
    fn = eval_dataset_fn(source, batch_size=8)
    seen = [i for w in range(2)
            for x, _, valid in fn(tf.distribute.InputContext(2, w, 4))
            for i in np.array(_ids(x))[valid.numpy()]]
    assert sorted(seen) == list(range(N_TEST))


def test_the_loop_trains_and_evaluates_a_sharded_source(source, tmp_path, two_cpu_strategy):
    results = train(run_dir=str(tmp_path), dataset=source, model="cnn_fashion",
                    model_options={"filters": (4,), "dropout": 0.0}, batch_size=20, epochs=2,
                    eval_batch_size=16, eval_train_set=True, strategy=two_cpu_strategy,
                    verbose=False)
    assert results["status"] == "completed" and len(results["epochs"]) == 2
    assert all(0.0 <= e["test_accuracy"] <= 1.0 and np.isfinite(e["test_loss"])
               for e in results["epochs"])
    # the recorded test loss is that of the saved model over the test set (other batching)
    model = keras.models.load_model(tmp_path / "model.keras")
    again = evaluate_fn(model)(eval_dataset_fn(source, batch_size=37))
    assert again["loss"] == pytest.approx(results["epochs"][-1]["test_loss"], rel=1e-5)
