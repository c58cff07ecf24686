"""The loop in-process: AdaBatch phases on 2 replicas rebuild the pipeline without retracing,
the LR follows base x phase multiplier, and accumulation matches direct updates."""

import json

import numpy as np
import pytest

from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules import AdaBatch
from keras_largebatch.training.loop import train

from .helpers import fashion_subset

SMALL = {"filters": (8, 16), "dropout": 0.0}


def test_adabatch_phases_share_one_trace_and_decay_the_lr(tmp_path, two_cpu_strategy):
    # Seed 000's pairing at toy scale: batch x2 and LR x0.5 every epoch, 2 replicas.
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), model="cnn_fashion",
                    model_options=SMALL, optimizer="momentum", learning_rate=0.05, epochs=3,
                    batch_schedule=AdaBatch(64, 1, growth_factor=2, lr_decay=0.5),
                    strategy=two_cpu_strategy, verbose=False)
    assert results["batch_size_per_epoch"] == [64, 128, 256]
    assert results["trace_count"] == 1
    lrs = [e["learning_rate"] for e in results["epochs"]]
    np.testing.assert_allclose(lrs, [0.05, 0.025, 0.0125], rtol=1e-6)
    assert [e["epoch"] for e in json.loads((tmp_path / "history.json").read_text())] == [1, 2, 3]
    assert (tmp_path / "checkpoints" / "checkpoint").exists()


def test_linear_lr_scaling_uses_the_phase_batch(tmp_path, one_cpu_strategy):
    # Seed 001's view: base LR eta~ = eta / m, the update uses eta~ * m.
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), epochs=2, model_options=SMALL,
                    learning_rate=0.0005, lr_scaling="linear",
                    batch_schedule=AdaBatch(32, 1), strategy=one_cpu_strategy, verbose=False)
    np.testing.assert_allclose([e["learning_rate"] for e in results["epochs"]],
                               [0.0005 * 32, 0.0005 * 64], rtol=1e-6)


def test_micro_batches_that_do_not_split_are_refused_before_training(tmp_path,
                                                                     one_cpu_strategy):
    with pytest.raises(UserInputError, match="max_per_replica_batch|micro"):
        train(run_dir=str(tmp_path / "r"), dataset=fashion_subset(), batch_size=100,
              max_per_replica_batch=40, epochs=1, strategy=one_cpu_strategy, verbose=False)
    assert not (tmp_path / "r").exists()


def test_a_deterministic_run_leaves_op_determinism_as_it_found_it(tmp_path, one_cpu_strategy):
    """train.deterministic turns on TensorFlow's process-wide op determinism (which also makes
    Keras refuse XLA) for the run only: a later model.fit(jit_compile=True) in the same process
    must not find it on."""
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()
    train(run_dir=str(tmp_path / "run"), dataset=fashion_subset(256, 100), batch_size=64,
          epochs=1, model_options={"filters": (4,), "dropout": 0.0}, deterministic=True,
          strategy=one_cpu_strategy, verbose=False)
    assert not tf_config.is_op_determinism_enabled()
