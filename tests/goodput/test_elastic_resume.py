"""Elastic resume through the CLI's entry point (tests/inprocess.py): a run started on 2 replicas,
stopped by SIGTERM, continues on 1 replica, is stopped again and finishes on 2. The machine's
bindings are not part of the run's identity; the global batch, the data order and the epochs are
the same as an uninterrupted run's, the weights equal to float round-off (sums over 1 and 2
replicas differ in the last bits), and a batch the new count cannot split is one error line."""

import json

import keras
import numpy as np

from ..cli import TINY, error_lines
from ..inprocess import run_main

B = "--gin_bindings="
COMMON = [*TINY, B + "train.epochs = 2", B + "train.batch_size = 512",
          B + "fashion_mnist.max_train_examples = 4096", B + "train.deterministic = True",
          B + "train.checkpoint_every_steps = 0"]
TWO = B + "make_strategy.num_cpu_replicas = 2"
# One replica: no machine binding at all (TensorFlow's default strategy: one device); binding
# num_cpu_replicas = 1 would reconfigure the test process' devices (tests/conftest.py).
ONE = B + "make_strategy.connect_timeout_s = 300"


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_two_replicas_then_one_then_two(tmp_path):
    reference = run_main(*COMMON, TWO, f"--run_dir={tmp_path / 'ref'}")
    assert reference.returncode == 0, reference.stderr
    run = f"--run_dir={tmp_path / 'run'}"
    first = run_main(*COMMON, TWO, run, faults=["signal_at_step=3:SIGTERM"])
    assert first.returncode == 143, first.stderr          # 8 updates per epoch: stopped in 1
    second = run_main(*COMMON, ONE, run, faults=["signal_at_step=11:SIGTERM"])
    assert second.returncode == 143, second.stderr
    assert "Resuming" in second.stdout and "at epoch 1, step 3" in second.stdout
    third = run_main(*COMMON, TWO, run)
    assert third.returncode == 0, third.stderr
    assert "at epoch 2, step 3" in third.stdout

    ref, got = _results(tmp_path / "ref"), _results(tmp_path / "run")
    assert got["batch_size_per_epoch"] == ref["batch_size_per_epoch"] == [512, 512]
    assert got["replicas"] == 2
    assert [e["epoch"] for e in got["epochs"]] == [1, 2]
    assert abs(got["final_test_accuracy"] - ref["final_test_accuracy"]) < 0.01
    ref_model = keras.saving.load_model(tmp_path / "ref" / "model.keras")
    got_model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    # 16 momentum updates amplify last-bit differences of the replica sums to ~2e-4 of a
    # tensor's norm here; one update on other samples moves the weights by ~1e-2 of it.
    for a, b in zip(ref_model.get_weights(), got_model.get_weights()):
        assert np.linalg.norm(a - b) <= 2e-3 * max(np.linalg.norm(a), 1e-12)


def test_a_batch_the_new_count_cannot_split_is_one_line(tmp_path):
    run = f"--run_dir={tmp_path / 'run'}"
    odd = [*TINY, B + "train.epochs = 1", B + "train.batch_size = 255",
           B + "fashion_mnist.max_train_examples = 2040"]
    first = run_main(*odd, ONE, run)
    assert first.returncode == 0, first.stderr
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    again = run_main(*odd, TWO, run)
    assert again.returncode == 2
    lines = error_lines(again)
    assert len(lines) == 1 and "255 is not divisible by the 2 replicas" in lines[0], lines
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_run_identity_leaves_out_only_the_machine():
    from keras_largebatch.training.run_dir import run_identity

    a = ("# Parameters for make_strategy:\nmake_strategy.num_cpu_replicas = 2\n\n"
         "# Parameters for train:\ntrain.epochs = 2\n")
    assert run_identity(a) == run_identity("train.epochs = 2")
    assert run_identity(a) != run_identity("train.epochs = 3")
    assert run_identity("make_strategy.collective_timeout_s = 5\ntrain.seed = 1") == [
        "train.seed = 1"]
