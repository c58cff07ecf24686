"""Shared test fixtures for training tests: a real Fashion-MNIST subset as a DataSource."""

import functools

from keras_largebatch.data import DataSource, get_source


@functools.cache
def fashion_subset(num_train: int = 2048, num_test: int = 1000) -> DataSource:
    """The first `num_train` / `num_test` real Fashion-MNIST images (same normalisation)."""
    full = get_source("fashion_mnist")
    (x, y), (xt, yt) = full.train_arrays, full.test_arrays
    return DataSource(
        name="fashion_mnist_subset", input_shape=full.input_shape, num_classes=10,
        num_train=num_train, num_test=num_test, mean=full.mean, std=full.std,
        train_arrays=(x[:num_train], y[:num_train]), test_arrays=(xt[:num_test], yt[:num_test]),
    )


# results.json fields that measure wall-clock time: two runs of the same config differ there only.
WALL_CLOCK = {"epoch_time_s", "samples_per_second", "wall_time_s", "step_time_s"}


def comparable(results: dict) -> dict:
    """`results` without its wall-clock fields (top level and per epoch): equal for two runs
    that trained the same (with train.deterministic, to the bit)."""
    results = {k: v for k, v in results.items() if k not in WALL_CLOCK}
    results["epochs"] = [{k: v for k, v in e.items() if k not in WALL_CLOCK}
                         for e in results["epochs"]]
    return results
