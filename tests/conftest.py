"""Test session set-up: two logical CPU devices so MirroredStrategy runs real replicas.

Logical devices must be configured before TensorFlow initialises its runtime, so this runs at
import time of the test session, before any test module touches TensorFlow.
"""

import os

from keras_largebatch import tf_log  # light: imports neither TensorFlow nor Keras

# TF_CPP_MIN_LOG_LEVEL 2 and TensorFlow's start-up lines filtered, as every command line does:
# under xdist the controller process's stderr reaches the terminal after the summary.
tf_log.install()

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

from keras_largebatch.training.strategy import mirrored  # noqa: E402

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """A real MirroredStrategy over two logical CPU devices."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    return mirrored(devices)  # the process's one strategy over them (training/strategy.py)


@pytest.fixture(scope="session")
def one_cpu_strategy():
    """A MirroredStrategy over one CPU device (same code path, one replica)."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:1]
    return mirrored(devices)  # the process's one strategy over them (training/strategy.py)


def pytest_runtest_setup(item):
    """`@pytest.mark.needs_root` (mounts, network namespaces): skipped, with the reason, when
    not root. CI runs the suite as root, so they run there."""
    if item.get_closest_marker("needs_root") is not None and os.geteuid() != 0:
        pytest.skip("needs root (it mounts a file system or creates network namespaces); "
                    "CI runs the suite as root")
