"""Divergence: stop with a one-line message and status "diverged" (exit 3 on the CLI), never a
checkpoint with non-finite values; or roll back to the last checkpoint with a lower LR."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.training.loop import train

from ..cli import TINY, error_lines, run_cli
from .helpers import fashion_subset

SMALL = {"filters": (8, 16), "dropout": 0.0}
FAST = dict(model="cnn_fashion", model_options=SMALL, batch_size=64, log_every_steps=4,
            verbose=False)  # 32 updates per epoch on the 2048 subset
NAN = dict(optimizer="sgd", learning_rate=1e10)  # NaN loss within 4 updates
HUGE = dict(optimizer="momentum", learning_rate=3.0)  # finite but exploding loss


def _all_checkpoints_finite(run_dir) -> int:
    """Assert every float tensor of every checkpoint on disk is finite; return how many."""
    paths = sorted({p.with_suffix("") for p in (run_dir / "checkpoints").glob("ckpt-*.index")})
    for path in paths:
        reader = tf.train.load_checkpoint(str(path))
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating:
                assert np.all(np.isfinite(reader.get_tensor(name))), (path, name)
    return len(paths)


def test_stop_names_epoch_and_step_and_writes_no_nonfinite_checkpoint(tmp_path,
                                                                        one_cpu_strategy, capsys):
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), epochs=2,
                    checkpoint_every_steps=1, strategy=one_cpu_strategy, **NAN, **FAST)
    assert results["status"] == "diverged"
    div = results["divergence"]
    assert div["epoch"] == 1 and div["step"] >= 1 and results["diverged_epoch"] == 1
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk["divergence"] == div
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"epoch 1, step {div['step']}" in lines[0], lines
    assert "train.on_divergence = 'restore'" in lines[0]
    assert _all_checkpoints_finite(tmp_path) >= 1  # saved every update until the divergence
    assert not (tmp_path / "model.keras").exists()


def test_loss_upper_bound_stops_a_finite_run(tmp_path, one_cpu_strategy):
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), epochs=1,
                    learning_rate=0.05, loss_upper_bound=0.01, strategy=one_cpu_strategy,
                    **FAST)
    assert results["status"] == "diverged"
    assert results["divergence"]["step"] == 4  # the first check, log_every_steps = 4
    assert "above train.loss_upper_bound = 0.01" in results["divergence"]["reason"]


def test_restore_rolls_back_and_lowers_the_learning_rate(tmp_path, one_cpu_strategy, capsys):
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), epochs=2,
                    on_divergence="restore", loss_upper_bound=5.0, divergence_lr_factor=0.02,
                    max_restores=2, checkpoint_every_steps=0, strategy=one_cpu_strategy,
                    **HUGE, **FAST)
    assert results["status"] == "completed", results.get("divergence")
    assert results["restores"] == 1
    # Rolled back to the initial checkpoint (ckpt-0): both epochs ran at 3.0 x 0.02.
    np.testing.assert_allclose([e["learning_rate"] for e in results["epochs"]], [0.06, 0.06],
                               rtol=1e-6)
    assert all(math.isfinite(e["train_loss"]) for e in results["epochs"])
    assert "rolled back to" in capsys.readouterr().err
    _all_checkpoints_finite(tmp_path)
    assert (tmp_path / "model.keras").exists()


def test_restore_gives_up_after_max_restores(tmp_path, one_cpu_strategy, capsys):
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), epochs=1,
                    on_divergence="restore", divergence_lr_factor=0.5, max_restores=1,
                    strategy=one_cpu_strategy, **NAN, **FAST)
    assert results["status"] == "diverged" and results["restores"] == 1
    assert "train.max_restores exhausted" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,match", [
    ({"on_divergence": "retry"}, "on_divergence must be 'stop' or 'restore'; got 'retry'"),
    ({"loss_upper_bound": -1.0}, "loss_upper_bound must be a positive number"),
    ({"divergence_lr_factor": 2.0}, r"divergence_lr_factor must be in \(0, 1\)"),
    ({"max_restores": -1}, "max_restores must be an integer >= 0"),
    ({"checkpoint_every_steps": -5}, "checkpoint_every_steps must be an integer >= 0"),
])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, kwargs, match):
    with pytest.raises(UserInputError, match=match):
        train(run_dir=str(tmp_path / "r"), dataset=fashion_subset(), **kwargs)
    assert not (tmp_path / "r").exists()


def test_cli_exit_status_3_and_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*TINY, "--gin_bindings=fashion_mnist.max_train_examples = 2000",
                   "--gin_bindings=fashion_mnist.max_test_examples = 1000",
                   "--gin_bindings=train.batch_size = 100", "--gin_bindings=train.epochs = 2",
                   "--gin_bindings=train.optimizer = 'sgd'",
                   "--gin_bindings=train.learning_rate = 1e10",
                   "--gin_bindings=train.log_every_steps = 5", f"--run_dir={run_dir}")
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and "training diverged at epoch 1, step" in lines[0], lines
    assert json.loads((run_dir / "results.json").read_text())["status"] == "diverged"
