"""The command line, as a user runs it: real processes, real Fashion-MNIST; and the proof that
tests/inprocess.py runs the same program: a bad input and a completed run, each both as a real
process and in-process, give the same exit status, lines, files and weights."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from .cli import TINY, error_lines, run_cli, tree_state
from .inprocess import run_main

QUICK = [
    "--gin_bindings=fashion_mnist.max_train_examples = 12000",
    "--gin_bindings=train.batch_size = 256",   # 46 updates per epoch
    "--gin_bindings=train.epochs = 2",
]
# What a fresh TensorFlow process prints before the program's own first line.
START_UP = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")


def _event_tags(run_dir: Path) -> set[str]:
    tags = set()
    for path in (run_dir / "tensorboard").glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.mark.slow  # a real 2-replica CLI run: 33-47 s on 2 busy cores
def test_two_replica_run_writes_results_config_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, *QUICK, "--gin_bindings=make_strategy.num_cpu_replicas = 2",
            "--gin_bindings=train.deterministic = True"]
    proc = run_cli(*args, f"--run_dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Final test accuracy" in proc.stdout and "46/46" in proc.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["replicas"] == 2
    assert [e["epoch"] for e in results["epochs"]] == [1, 2]
    assert results["batch_size_per_epoch"] == [256, 256]
    assert results["trace_count"] == 1
    assert results["final_test_accuracy"] > 0.6  # chance is 0.1
    assert results["best_test_accuracy"] == max(e["test_accuracy"] for e in results["epochs"])
    assert "train.epochs = 2" in (run_dir / "config.gin").read_text()
    tags = _event_tags(run_dir)
    for tag in ("train/loss", "train/accuracy", "test/loss", "test/accuracy", "learning_rate",
                "batch_size", "samples_per_second", "epoch_time_s", "updates_per_call", "config",
                "operative_config", "step/loss", "step/learning_rate"):
        assert tag in tags, tag

    # The same command in-process (tests/inprocess.py): the same program, to the bit.
    inproc = run_main(*args, f"--run_dir={tmp_path / 'inprocess'}")
    assert inproc.returncode == 0, inproc.stderr[-2000:]
    got = json.loads((tmp_path / "inprocess" / "results.json").read_text())
    assert got["weights_sha256"] == results["weights_sha256"]
    for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "learning_rate",
                "batch_size"):
        assert [e[key] for e in got["epochs"]] == [e[key] for e in results["epochs"]], key
    for key in ("status", "replicas", "batch_size_per_epoch", "final_test_accuracy",
                "best_test_accuracy", "trace_count"):
        assert got[key] == results[key], key
    final = [line for line in proc.stdout.splitlines() if line.startswith("Final")]
    assert [line.replace(str(tmp_path / "inprocess"), str(run_dir))
            for line in inproc.stdout.splitlines() if line.startswith("Final")] == final
    assert (tmp_path / "inprocess" / "config.gin").read_text() == (
        run_dir / "config.gin").read_text()


def test_bad_input_in_process_is_the_real_process(tmp_path):
    """A run dir holding another config, refused both ways: the same status, stdout, stderr
    (less a fresh process's TensorFlow start-up lines) and the same files afterwards."""
    procs, trees = {}, {}
    for how, run in (("process", run_cli), ("inprocess", run_main)):
        run_dir = tmp_path / how / "run"
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.gin").write_text("train.epochs = 99\n")
        (run_dir / "checkpoints" / "ckpt-1.index").write_bytes(b"previous checkpoint")
        before = tree_state(tmp_path / how)
        procs[how] = run(*TINY, "--gin_bindings=train.epochs = 2", f"--run_dir={run_dir}")
        trees[how] = tree_state(tmp_path / how)
        assert trees[how] == before
    process, inprocess = procs["process"], procs["inprocess"]
    assert process.returncode == inprocess.returncode == 2, process.stderr[-2000:]
    lines = error_lines(process)
    assert len(lines) == 1 and "holds a run with a different config" in lines[0], lines
    assert error_lines(inprocess) == [lines[0].replace(
        str(tmp_path / "process"), str(tmp_path / "inprocess"))]
    own = [line for line in process.stderr.splitlines() if not line.startswith(START_UP)]
    assert inprocess.stderr.replace(str(tmp_path / "inprocess"), str(tmp_path / "process")
                                    ).splitlines() == own
    assert inprocess.stdout == process.stdout
    assert trees["inprocess"] == trees["process"]


@pytest.mark.slow  # real CLI runs, killed and resumed: ~36 s on 2 busy cores
def test_killed_run_resumes_at_the_right_epoch_and_phase(tmp_path):
    run_dir = tmp_path / "run"
    adabatch = ["--gin_bindings=train.batch_schedule = @AdaBatch()",
                "--gin_bindings=AdaBatch.initial_batch_size = 256",   # 46 updates in epoch 1
                "--gin_bindings=AdaBatch.interval_epochs = 1",        # then 512: 23 updates
                "--gin_bindings=AdaBatch.lr_decay = 0.5"]
    args = [*TINY, *QUICK, *adabatch, f"--run_dir={run_dir}"]
    killed = run_cli(*args, faults=[f"kill_at_step={46 + 10}"])
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL inside phase 2
    first_epoch = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in first_epoch] == [1]
    resumed = run_main(*args)  # the rerun in-process (tests/inprocess.py)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at epoch 2, step 0" in resumed.stdout
    assert "Epoch 1/2" not in resumed.stdout
    assert "Epoch 2/2 (global batch 512, 23 steps)" in resumed.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["batch_size_per_epoch"] == [256, 512]
    assert results["epochs"][0] == first_epoch[0]  # epoch 1 was not retrained
    assert results["epochs"][1]["learning_rate"] == 0.5 * results["epochs"][0]["learning_rate"]


def test_console_script_lists_configurables():
    script = str(Path(sys.executable).with_name("keras-largebatch"))
    proc = run_cli("--list_configurables", script=script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = proc.stdout.split()
    for name in ("train", "make_strategy", "fashion_mnist", "cnn_fashion", "resnet20", "SGD"):
        assert name in names


def test_default_gin_matches_the_train_defaults():
    """gin/default.gin is `train`'s own defaults plus an AdaBatch schedule that starts at
    train's default batch: the run `train()` would do, with the batch growing in phases."""
    import inspect

    from keras_largebatch.training.loop import train

    text = (Path(__file__).resolve().parents[1] / "gin" / "default.gin").read_text()
    text = text.replace('"', "'")
    defaults = inspect.signature(train).parameters
    for name in ("optimizer", "learning_rate", "epochs"):
        value = defaults[name].default
        assert f"train.{name} = {value!r}".replace('"', "'") in text, name
    assert "train.batch_schedule = @AdaBatch()" in text
    assert f"AdaBatch.initial_batch_size = {defaults['batch_size'].default!r}" in text
    code = [line.split("#")[0] for line in text.splitlines()]
    assert not any("train.batch_size" in line for line in code)  # the schedule sets each batch
    assert os.path.exists(Path(__file__).resolve().parents[1] / "gin" / "tests" / "tiny.gin")
    np.testing.assert_equal(defaults["dataset"].default, "fashion_mnist")
