"""Data sources: the Debian Fashion-MNIST files, and the tfds path with mocked data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_largebatch.data import get_source, train_dataset_fn
from keras_largebatch.errors import UserInputError


def test_fashion_mnist_from_debian_package():
    s = get_source("fashion_mnist")
    assert (s.num_train, s.num_test, s.input_shape, s.num_classes) == (60000, 10000, (28, 28, 1),
                                                                      10)
    x, y = s.test_arrays
    assert x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)


def test_unknown_dataset_names_choices():
    with pytest.raises(UserInputError, match=r"unknown dataset 'cifar11'.*cifar10"):
        get_source("cifar11")


def test_missing_directory_says_how_to_install(tmp_path):
    with pytest.raises(UserInputError, match="apt-get install -y dataset-fashion-mnist"):
        get_source("fashion_mnist", data_dir=str(tmp_path / "absent"))


def test_max_examples_keep_the_first_ones_and_none_keeps_all():
    full = get_source("fashion_mnist")
    s = get_source("fashion_mnist", max_train_examples=300, max_test_examples=None)
    assert (s.num_train, s.num_test) == (300, 10000)
    np.testing.assert_array_equal(s.train_arrays[1], full.train_arrays[1][:300])
    assert get_source("fashion_mnist", max_train_examples=10**9).num_train == 60000


@pytest.mark.parametrize("name,value,says", [
    ("max_test_examples", 0, "max_test_examples=0 must be >= 1"),   # 0 once meant "all"
    ("max_train_examples", -5, "max_train_examples=-5 must be >= 1"),
    ("max_train_examples", 2500.5, "max_train_examples=2500.5 is not a whole number"),
    ("max_test_examples", "300", "max_test_examples='300' is not a whole number"),
    ("max_train_examples", True, "max_train_examples=True is not a whole number"),
])
def test_bad_max_examples_name_the_binding(name, value, says):
    with pytest.raises(UserInputError, match=f"^fashion_mnist.{says}"):
        get_source("fashion_mnist", **{name: value})


@pytest.mark.parametrize("name,shape,classes", [("cifar10", (32, 32, 3), 10),
                                                ("cifar100", (32, 32, 3), 100)])
def test_cifar_through_tfds_mock(name, shape, classes):
    with tfds.testing.mock_data(num_examples=64):
        s = get_source(name)
    assert s.input_shape == shape and s.num_classes == classes and s.num_train == 64
    images, labels = next(iter(train_dataset_fn(s, global_batch_size=16, epoch=0, seed=0)()))
    assert images.shape == (16, *shape) and labels.shape == (16,)
    assert int(labels.numpy().max()) < classes


def test_imagenet_through_tfds_mock():
    with tfds.testing.mock_data(num_examples=8):
        s = get_source("imagenet2012", image_size=64)
        images, labels = next(iter(train_dataset_fn(s, global_batch_size=4, epoch=0, seed=0)()))
    assert images.shape == (4, 64, 64, 3) and labels.shape == (4,)
    assert s.num_classes == 1000
