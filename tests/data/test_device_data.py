"""The training set held on the device (data/device_data.py): the step gathers the batches the
input pipeline would have made, to the bit, and whole runs train the same either way.

References: the uint8 Fashion-MNIST rows the pipeline's seeded permutation picks, normalised
in NumPy (float32 division and subtraction are correctly rounded, so NumPy's bits are the
pipeline's), and the same run through the pipeline's map (`train.inputs_on_device = False`).
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.data import device_data
from keras_largebatch.data.device_data import DeviceData
from keras_largebatch.data.pipeline import train_dataset_fn
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import AdaBatch
from keras_largebatch.training.build import inputs_on_device
from keras_largebatch.training.loop import train
from keras_largebatch.training.run_config import RunConfig

from ..training.helpers import comparable, fashion_subset


def numpy_batch(source, idx):
    x, y = source.train_arrays
    mean = np.asarray(source.mean, np.float32)
    std = np.asarray(source.std, np.float32)
    return (x[idx].astype(np.float32) / np.float32(255.0) - mean) / std, y[idx]


@pytest.mark.parametrize("workers,worker", [(1, 0), (2, 0), (2, 1)])
def test_every_index_chunk_gathers_the_pipelines_batch(workers, worker):
    source = fashion_subset()
    ctx = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                     num_replicas_in_sync=4)
    kwargs = dict(global_batch_size=128, epoch=3, seed=7, skip_steps=2)
    full = list(train_dataset_fn(source, **kwargs)(ctx))
    chunks = list(train_dataset_fn(source, indices_only=True, **kwargs)(ctx))
    # 2048 // 128 = 16 steps, 2 skipped; 4 replicas of 32, this worker's 4 // workers of them
    assert len(chunks) == len(full) == 14 * 4 // workers
    data = DeviceData.create(source, tf.distribute.get_strategy())
    seen = []
    for idx, (images, labels) in zip(chunks, full):
        assert idx.shape == (32,)
        gx, gy = DeviceData.lookup(idx, data.images, data.labels)
        nx, ny = numpy_batch(source, idx.numpy())
        assert np.array_equal(gx.numpy(), images.numpy())  # bitwise, as the map made it
        assert np.array_equal(gx.numpy(), nx) and np.array_equal(gy.numpy(), ny)
        assert np.array_equal(gy.numpy(), labels.numpy())
        seen.extend(idx.numpy().tolist())
    assert len(set(seen)) == len(seen)  # a permutation: no example twice in an epoch


def test_each_replica_holds_its_own_copy_on_its_device(two_cpu_strategy):
    source = fashion_subset()
    data = DeviceData.create(source, two_cpu_strategy)
    copies = two_cpu_strategy.experimental_local_results(data.images)
    assert [c.device for c in copies] == list(two_cpu_strategy.extended.worker_devices)
    nx, _ = numpy_batch(source, np.arange(source.num_train))
    for copy in copies:
        assert np.array_equal(copy.numpy(), nx)


def _kw(strategy, **extra):
    # 2048 images, batch 64 for epoch 1 and 128 for epoch 2 (an AdaBatch phase change)
    return dict(dataset=fashion_subset(), model_options={"filters": (8, 16), "dropout": 0.25},
                optimizer="momentum", learning_rate=0.05, epochs=2,
                batch_schedule=AdaBatch(64, interval_epochs=1, growth_factor=2, lr_decay=0.75),
                deterministic=True, strategy=strategy, verbose=False, **extra)


@pytest.mark.parametrize("steps_per_loop", [1, "auto"])
def test_a_run_trains_the_same_weights_with_the_set_on_the_device(
        tmp_path, two_cpu_strategy, steps_per_loop):
    runs = {on: train(run_dir=str(tmp_path / f"on_{on}"), inputs_on_device=on,
                      steps_per_loop=steps_per_loop, **_kw(two_cpu_strategy))
            for on in (False, True)}
    assert comparable(runs[True]) == comparable(runs[False])  # weights sha256, every epoch
    assert runs[True]["trace_count"] == 1  # one trace across the phase change


def _config(**kw):
    return RunConfig.from_train_args(**kw)


def test_auto_holds_the_set_where_it_applies_and_fits(monkeypatch):
    source = fashion_subset()  # 2048 x 784 float32 = 6,422,528 bytes
    assert device_data.normalized_bytes(source) == 2048 * 784 * 4
    assert inputs_on_device(_config(), source, None, ba=False)
    assert not inputs_on_device(_config(inputs_on_device=False), source, None, ba=False)
    assert not inputs_on_device(_config(repeats=2), source, None, ba=False)
    assert not inputs_on_device(_config(), source, lambda x, s: x, ba=False)
    assert not inputs_on_device(_config(), source, None, ba=True)
    monkeypatch.setattr(device_data, "AUTO_MAX_BYTES", 2048 * 784 * 4 - 1)
    assert not inputs_on_device(_config(), source, None, ba=False)  # too large for 'auto'
    assert inputs_on_device(_config(inputs_on_device=True), source, None, ba=False)


@pytest.mark.parametrize("kw,augment,ba,why", [
    ({"repeats": 2}, None, False, "train.repeats = 2 copies are made per batch"),
    ({}, "standard", False, "augmentation runs per batch"),
    ({}, None, True, "BA-Momentum's chunk step reads whole batches"),
])
def test_true_where_it_cannot_apply_is_refused_naming_why(kw, augment, ba, why):
    with pytest.raises(UserInputError, match=f"train.inputs_on_device = True cannot be used: "
                                             f"{why}.*use 'auto' or False"):
        inputs_on_device(_config(inputs_on_device=True, **kw), fashion_subset(), augment, ba=ba)


def test_not_a_bool_or_auto_is_refused():
    with pytest.raises(UserInputError, match="train.inputs_on_device must be True, False or "
                                             "'auto'; got 'yes'"):
        _config(inputs_on_device="yes")
