"""Data sources by name: `get_source("fashion_mnist")` and friends.

A `DataSource` says what a dataset is (input shape, classes, sizes, normalisation) and how to
read its examples. Small datasets are held in memory as uint8 arrays (`train_arrays` /
`test_arrays`), which lets the pipeline shuffle indices and gather whole batches at once; large
ones give an unbatched `tf.data.Dataset` of decoded examples instead.

Sharded readers (`DataSource.sharded_reader`): ImageNet always, CIFAR-10/100 with
`sharded_reader=True`, are read from the tfds files in worker shards (data/tfds_shards.py):
worker w of W reads only its 1/W share of the training set, in a per-epoch seeded order. The
in-memory sources keep the exact layout instead (every worker permutes the whole set the same
way, so 1 replica, R replicas and W workers see identical global batches); they are the
default for CIFAR because 50k small images fit in memory on every worker.

| name          | where it comes from                                                        |
|---------------|----------------------------------------------------------------------------|
| fashion_mnist | IDX files of the Debian package `dataset-fashion-mnist`, else `tfds.load`   |
| mnist         | IDX files in `mnist_dir` if given, else `tfds.load("mnist")`                 |
| cifar10       | `tfds.load("cifar10")` (in memory; worker shards with `sharded_reader=True`) |
| cifar100      | `tfds.load("cifar100")` (likewise)                                          |
| imagenet2012  | tfds `imagenet2012` in worker shards (manual download, see the tfds docs)    |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from keras_largebatch import validate
from keras_largebatch.data.idx import read_idx
from keras_largebatch.data.tfds_shards import read_shard
from keras_largebatch.errors import UserInputError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
Arrays = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A dataset: metadata plus either in-memory uint8 arrays or example datasets."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    mean: tuple[float, ...]  # per-channel, on the [0, 1] scale
    std: tuple[float, ...]
    train_arrays: Arrays | None = None
    test_arrays: Arrays | None = None
    # For sources too large for memory: () -> unbatched tf.data of (uint8 image, int label).
    train_examples: Callable[[], tf.data.Dataset] | None = None
    test_examples: Callable[[], tf.data.Dataset] | None = None
    # For sources read in worker shards: (num_shards, index, seed) -> that share's unbatched
    # examples, its files in a seeded order; (num_shards, index) -> the test share in order.
    train_shard: Callable[[int, int, int], tf.data.Dataset] | None = None
    test_shard: Callable[[int, int], tf.data.Dataset] | None = None

    @property
    def in_memory(self) -> bool:
        return self.train_arrays is not None

    @property
    def sharded_reader(self) -> bool:
        """Each worker reads only its share of the training set (not the exact layout)."""
        return self.train_shard is not None


def _read_idx_pair(directory: str, split: str, hint: str) -> Arrays:
    images_file, labels_file = _IDX_FILES[split]
    images = read_idx(os.path.join(directory, images_file), hint=hint)
    labels = read_idx(os.path.join(directory, labels_file), hint=hint)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserInputError(
            f"dataset files in {directory} do not match ({images.shape} images, "
            f"{labels.shape} labels); {hint}"
        )
    return images[..., None], labels.astype(np.int32)


def _tfds_arrays(tfds_name: str, data_dir: str | None) -> tuple[Arrays, Arrays]:
    import tensorflow_datasets as tfds

    try:
        splits = tfds.load(tfds_name, split=["train", "test"], as_supervised=True,
                           data_dir=data_dir)
    except Exception as e:  # tfds raises many types for "not downloadable here"
        raise UserInputError(
            f"dataset {tfds_name!r} could not be loaded with tfds ({type(e).__name__}); "
            f"download it on a networked machine with `tfds build {tfds_name}` and pass "
            f"data_dir=..., or choose dataset='fashion_mnist'"
        ) from None

    def to_arrays(ds) -> Arrays:
        parts = list(tfds.as_numpy(ds.batch(8192)))
        return (np.concatenate([p[0] for p in parts]).astype(np.uint8),
                np.concatenate([p[1] for p in parts]).astype(np.int32))

    return to_arrays(splits[0]), to_arrays(splits[1])


def check_labels(name: str, split: str, labels: np.ndarray, num_classes: int) -> None:
    """Every label must be a class index in [0, num_classes) (checked when data is loaded)."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise UserInputError(
            f"{name} {split} labels hold {int(labels[bad[0]])} at example {int(bad[0])} "
            f"({bad.size} labels outside 0..{num_classes - 1}); the label file is damaged or "
            f"not of this dataset: reinstall or replace it")


def _from_arrays(name, train: Arrays, test: Arrays, num_classes, mean=None, std=None):
    for split, (_, labels) in (("train", train), ("test", test)):
        check_labels(name, split, labels, num_classes)
    if mean is None:  # measured on the training set
        scaled = train[0].astype(np.float64) / 255.0
        mean = tuple(scaled.mean(axis=(0, 1, 2)))
        std = tuple(scaled.std(axis=(0, 1, 2)))
    return DataSource(
        name=name, input_shape=tuple(train[0].shape[1:]), num_classes=num_classes,
        num_train=len(train[0]), num_test=len(test[0]), mean=tuple(mean), std=tuple(std),
        train_arrays=train, test_arrays=test,
    )


def fashion_mnist(
    *,
    data_dir: str = FASHION_MNIST_DIR,
    tfds_fallback: bool = True,
    max_train_examples: int | None = None,
    max_test_examples: int | None = None,
) -> DataSource:
    """Fashion-MNIST (Xiao et al. 2017), 60k/10k 28x28 grey images, 10 classes.

    `max_*_examples` keep only the first examples (quick runs and tests; the dataset's
    normalisation constants stay those of the full training set).
    """
    source = _fashion_mnist(data_dir, tfds_fallback)
    if max_train_examples is None and max_test_examples is None:
        return source
    (x, y), (xt, yt) = source.train_arrays, source.test_arrays
    n, nt = (len(part) if value is None else validate.whole(
        f"fashion_mnist.{what}", value, minimum=1,
        fix="give a whole number of examples, or None for all of them")
        for what, value, part in (("max_train_examples", max_train_examples, x),
                                  ("max_test_examples", max_test_examples, xt)))
    return dataclasses.replace(source, num_train=min(n, len(x)), num_test=min(nt, len(xt)),
                               train_arrays=(x[:n], y[:n]), test_arrays=(xt[:nt], yt[:nt]))


def _fashion_mnist(data_dir: str, tfds_fallback: bool) -> DataSource:
    hint = (
        "install it with: apt-get install -y dataset-fashion-mnist (or set "
        "fashion_mnist.data_dir to a folder holding the four IDX .gz files)"
    )
    if not os.path.isdir(data_dir) and tfds_fallback and data_dir == FASHION_MNIST_DIR:
        try:
            train, test = _tfds_arrays("fashion_mnist", None)
        except UserInputError:
            raise UserInputError(f"Fashion-MNIST not found in {data_dir}; {hint}") from None
        return _from_arrays("fashion_mnist", train, test, 10)
    train = _read_idx_pair(data_dir, "train", hint)
    test = _read_idx_pair(data_dir, "test", hint)
    return _from_arrays("fashion_mnist", train, test, 10, mean=(0.2860,), std=(0.3530,))


def mnist(*, data_dir: str | None = None) -> DataSource:
    """MNIST digits from IDX files in `data_dir`, else `tfds.load("mnist")`."""
    if data_dir:
        hint = f"put the four MNIST IDX .gz files in {data_dir}"
        return _from_arrays("mnist", _read_idx_pair(data_dir, "train", hint),
                            _read_idx_pair(data_dir, "test", hint), 10)
    return _from_arrays("mnist", *_tfds_arrays("mnist", None), 10)


_CIFAR = {"cifar10": (10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
          "cifar100": (100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def _cifar(name: str, data_dir: str | None, sharded_reader: bool) -> DataSource:
    classes, mean, std = _CIFAR[name]
    if not sharded_reader:
        return _from_arrays(name, *_tfds_arrays(name, data_dir), classes, mean=mean, std=std)
    return _tfds_sharded(name, data_dir, ("train", "test"), input_shape=(32, 32, 3),
                         num_classes=classes, mean=mean, std=std)


def cifar10(*, data_dir: str | None = None, sharded_reader: bool = False) -> DataSource:
    """CIFAR-10 through tensorflow-datasets (32x32x3, 10 classes).

    In memory (exact layout) by default; `sharded_reader=True` reads worker shards of the
    tfds files instead (module docstring)."""
    return _cifar("cifar10", data_dir, sharded_reader)


def cifar100(*, data_dir: str | None = None, sharded_reader: bool = False) -> DataSource:
    """CIFAR-100 through tensorflow-datasets (32x32x3, 100 classes); see `cifar10`."""
    return _cifar("cifar100", data_dir, sharded_reader)


def _num_examples(builder, split: str) -> int:
    """Split size from the dataset info, else counted (tfds' mock data carries no info)."""
    splits = builder.info.splits
    if split in splits:
        return splits[split].num_examples
    ds = builder.as_dataset(split=split)
    n = int(ds.cardinality())
    return n if n >= 0 else int(ds.reduce(0, lambda count, _: count + 1))


def _tfds_sharded(name: str, data_dir: str | None, splits: tuple[str, str], *,
                  input_shape, num_classes, mean, std, hint: str = "",
                  transform=None) -> DataSource:
    """A source read from tfds files in worker shards (data/tfds_shards.py)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        num_train, num_test = (_num_examples(builder, split) for split in splits)
    except Exception as e:
        raise UserInputError(
            f"dataset {name!r} is not available ({type(e).__name__}); prepare it with "
            f"`tfds build {name}`{hint} and pass data_dir=..."
        ) from None
    transform = transform or (lambda x, y: (tf.cast(x, tf.uint8), tf.cast(y, tf.int32)))

    def train_shard(num_shards, index, seed):
        return read_shard(builder, splits[0], num_shards=num_shards, index=index, seed=seed,
                          transform=transform)

    def test_shard(num_shards, index):
        return read_shard(builder, splits[1], num_shards=num_shards, index=index,
                          transform=transform)

    return DataSource(
        name=name, input_shape=tuple(input_shape), num_classes=num_classes,
        num_train=num_train, num_test=num_test, mean=tuple(mean), std=tuple(std),
        train_examples=lambda: train_shard(1, 0, None), test_examples=lambda: test_shard(1, 0),
        train_shard=train_shard, test_shard=test_shard,
    )


def imagenet2012(*, data_dir: str | None = None, image_size: int = 224) -> DataSource:
    """ImageNet-1k through tensorflow-datasets, read in worker shards; examples decoded and
    resized on the fly.

    Training images are resized to `image_size` here; the Inception-style random-resized-crop
    augmentation of the ResNet-50 recipe belongs to the augmentation policy.
    """
    def resize(x, y):
        return (tf.cast(tf.image.resize(x, (image_size, image_size)), tf.uint8),
                tf.cast(y, tf.int32))

    return _tfds_sharded("imagenet2012", data_dir, ("train", "validation"),
                         input_shape=(image_size, image_size, 3), num_classes=1000,
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         hint=" (manual download)", transform=resize)


SOURCES: dict[str, Callable[..., DataSource]] = {
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "imagenet2012": imagenet2012,
}


def get_source(name: str, *, sources: Mapping[str, Callable[..., DataSource]] | None = None,
               **options) -> DataSource:
    """Load the data source `name` (see the table in this module's docstring).

    `sources` replaces the table `SOURCES` (keras_largebatch/config.py passes gin-configurable
    versions of the same functions)."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        raise UserInputError(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(sources))}"
        )
    return sources[name](**options)
