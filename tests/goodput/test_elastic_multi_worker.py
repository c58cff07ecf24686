"""Elastic resume across worker counts through the real CLI: 2 worker processes (TF_CONFIG on
127.0.0.1) stopped by SIGTERM, resumed as 1 worker (no TF_CONFIG; in this process through the
CLI's entry point), stopped again, finished by 2 workers. The global batch, the epochs and the
samples are those of an uninterrupted 2-replica run; the weights differ from it by no more than
the replica count's own round-off does."""

import json

import keras
import numpy as np
import pytest

from ..inprocess import run_main
from ..training.test_multi_worker_cli import TINY, B, free_ports, run_workers

CONFIG = (*TINY, B + "fashion_mnist.max_train_examples = 4096",
          B + "fashion_mnist.max_test_examples = 2000", B + "train.epochs = 2",
          B + "train.batch_size = 128", B + "train.checkpoint_every_steps = 0",
          B + "train.deterministic = True")  # 32 updates per epoch


@pytest.mark.slow
def test_two_workers_then_one_then_two(tmp_path):
    for name in ("first", "third"):
        (tmp_path / name).mkdir()
    run_dir = tmp_path / "run"
    first = run_workers(run_dir, free_ports(2), tmp_path / "first", config=CONFIG,
                        last_worker_faults=("signal_at_step=20:SIGTERM",))
    for code, output in first:
        assert code == 143, output[-3000:]
    second = run_main(*CONFIG, f"--run_dir={run_dir}", faults=["signal_at_step=40:SIGTERM"])
    assert second.returncode == 143, second.stderr[-3000:]
    assert "at epoch 1, step 21" in second.stdout, second.stdout[-2000:]
    third = run_workers(run_dir, free_ports(2), tmp_path / "third", config=CONFIG)
    for code, output in third:
        assert code == 0, output[-3000:]
        assert "at epoch 2, step 8" in output, output[-2000:]

    runs = {}
    for name, machine in (("ref", [B + "make_strategy.num_cpu_replicas = 2"]), ("one", [])):
        proc = run_main(*CONFIG, *machine, f"--run_dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = tmp_path / name
    runs["chain"] = run_dir
    results = {k: json.loads((v / "results.json").read_text()) for k, v in runs.items()}
    ref, got = results["ref"], results["chain"]
    assert got["batch_size_per_epoch"] == ref["batch_size_per_epoch"] == [128, 128]
    assert got["replicas"] == 2
    assert abs(got["final_test_accuracy"] - ref["final_test_accuracy"]) < 0.02
    weights = {k: keras.saving.load_model(v / "model.keras").get_weights()
               for k, v in runs.items()}

    def distance(a, b):
        return max(np.linalg.norm(x - y) / np.linalg.norm(x) for x, y in zip(a, b))

    # The chain ran a third of its updates on one replica: it may differ from the 2-replica
    # run by about what one replica instead of two does over the whole run (float sums in
    # another order, amplified over 64 momentum updates: ~2e-2 of a tensor's norm here),
    # not by more.
    assert distance(weights["ref"], weights["chain"]) <= 2 * distance(weights["ref"],
                                                                      weights["one"])


GOODPUT = (*TINY, B + "fashion_mnist.max_train_examples = 4096",
           B + "fashion_mnist.max_test_examples = 1000", B + "train.epochs = 3",
           B + "train.batch_schedule = @GoodputBatch()", B + "GoodputBatch.min_batch_size = 64",
           B + "GoodputBatch.max_batch_size = 512", B + "train.checkpoint_every_steps = 0")


@pytest.mark.slow
def test_two_workers_decide_the_same_batch(tmp_path):
    """Each worker times its own updates; the throughput model is fitted to step times that
    differ by microseconds between the workers, so each worker would predict another goodput
    (and, at a near tie, pick another batch, leaving the other waiting in a collective of
    another shape). Both must print the same decisions, to the digit, and finish."""
    (tmp_path / "logs").mkdir()
    out = run_workers(tmp_path / "run", free_ports(2), tmp_path / "logs", config=GOODPUT)
    lines = []
    for code, output in out:
        assert code == 0, output[-3000:]
        lines.append([x for x in output.splitlines() if x.startswith("GoodputBatch:")])
    assert len(lines[0]) == 2, out[0][1][-3000:]  # after epochs 1 and 2, not after the last
    assert lines[0] == lines[1]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    chosen = [int(x.split("global batch ")[1].split()[0]) for x in lines[0]]
    assert [h["batch_size"] for h in history][1:] == chosen
