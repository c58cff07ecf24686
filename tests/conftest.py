"""Test session set-up: two logical CPU devices so MirroredStrategy runs real replicas.

Logical devices must be configured before TensorFlow initialises its runtime, so this runs at
import time of the test session, before any test module touches TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def pytest_collection_modifyitems(session, config, items):
    """Modules with a test marked slow run first (stable: each module keeps its order).

    `make test` runs two workers with --dist loadscope, which hands out whole modules in
    collection order: the long real-CLI modules (tests/training/ is collected last) would
    otherwise start at the end and run alone while the other worker idles."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """A real MirroredStrategy over two logical CPU devices."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    return tf.distribute.MirroredStrategy(devices)


@pytest.fixture(scope="session")
def one_cpu_strategy():
    """A MirroredStrategy over one CPU device (same code path, one replica)."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:1]
    return tf.distribute.MirroredStrategy(devices)
