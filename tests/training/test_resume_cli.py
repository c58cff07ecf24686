"""Exact resume through the real CLI: runs killed (SIGKILL mid-epoch, at an AdaBatch phase
boundary, during a checkpoint write) or stopped (SIGTERM, SIGINT) and restarted with the same
command end bitwise identical to an uninterrupted run: every checkpointed tensor (weights,
optimizer slots, progress, running metrics, dropout RNG) and results.json minus wall-clock fields.

One chain of restarts per replica count: each link is killed at its own point and the next one
resumes it, so each run checks several resumes; the uninterrupted references run alongside.
Links killed by SIGKILL are real processes; the references, the SIGTERM / SIGINT links (the
graceful path main installs) and the final resumes run in-process (tests/inprocess.py).
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ..cli import TINY, run_cli
from ..inprocess import IN_PROCESS_FAULTS, run_main

B = "--gin_bindings="
# 12000 examples, AdaBatch 256 -> 512 -> 1024: 46 + 23 + 11 = 80 updates over 3 epochs.
CONFIG = [*TINY, B + "fashion_mnist.max_train_examples = 12000", B + "train.epochs = 3",
          B + "fashion_mnist.max_test_examples = 2000",
          B + "train.batch_schedule = @AdaBatch()", B + "AdaBatch.initial_batch_size = 256",
          B + "AdaBatch.interval_epochs = 1", B + "AdaBatch.lr_decay = 0.5",
          B + "cnn_fashion.dropout = 0.25",        # the dropout RNG must resume too
          B + "train.checkpoint_every_steps = 10", B + "train.deterministic = True"]
TWO_REPLICAS = [B + "make_strategy.num_cpu_replicas = 2"]
WALL_CLOCK = {"epoch_time_s", "samples_per_second", "wall_time_s", "step_time_s"}

# (faults (tests/faults.py), exit status, text on stdout/stderr, latest checkpoint after it)
CHAIN_ONE_REPLICA = [
    (["kill_at_step=25"], -9, "", "ckpt-20"),  # mid-epoch
    (["signal_at_step=35:SIGTERM"], 143,
     "interrupted by SIGTERM at epoch 1, step 35", "ckpt-35"),
    # SIGINT on the last update before a phase switch: the epoch's evaluation and checkpoint
    # finish first, the next run starts the new phase.
    (["signal_at_step=69:SIGINT"], 130,
     "interrupted by SIGINT at epoch 3, step 0", "ckpt-69"),
    ([], 0, "Resuming", "ckpt-80"),
]
CHAIN_TWO_REPLICAS = [
    # Killed while writing ckpt-46, the epoch-end checkpoint at the phase switch 256 -> 512.
    (["kill_in_save=46"], -9, "", "ckpt-40"),
    # Resumes before the switch and crosses it again, rewriting the half-written ckpt-46.
    (["kill_at_step=75"], -9, "at epoch 1, step 40", "ckpt-70"),
    ([], 0, "at epoch 3, step 1", "ckpt-80"),
]


def _latest(run_dir: Path) -> str | None:
    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    return Path(path).name if path else None


def _run_links(run_dir: Path, extra: list[str], links: list, log: list) -> bool:
    """Run `links` in order into `log`; False once one ends with another status than planned."""
    for faults, code, text, latest in links:
        in_process = all(f.startswith(IN_PROCESS_FAULTS) for f in faults)
        proc = (run_main if in_process else run_cli)(*CONFIG, *extra, f"--run_dir={run_dir}",
                                                      faults=faults)
        results = run_dir / "results.json"
        status = json.loads(results.read_text())["status"] if results.exists() else None
        log.append((proc, code, text, latest, _latest(run_dir), status))
        if proc.returncode != code:
            return False
    return True


def _killed_links(chain: list) -> int:
    """How many links at the chain's start need a real process (a SIGKILL fault)."""
    return next((i for i, (faults, *_) in enumerate(chain)
                 if all(f.startswith(IN_PROCESS_FAULTS) for f in faults)), len(chain))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The killed links in threads (real processes); meanwhile the references in this process,
    then each chain's remaining links in this process (signal handlers: main thread)."""
    tmp = tmp_path_factory.mktemp("resume")
    chains = {"chain1": ([], CHAIN_ONE_REPLICA), "chain2": (TWO_REPLICAS, CHAIN_TWO_REPLICAS)}
    out = {name: [] for name in chains}
    with ThreadPoolExecutor(max_workers=2) as pool:
        killed = {name: pool.submit(_run_links, tmp / name, extra,
                                    chain[:_killed_links(chain)], out[name])
                  for name, (extra, chain) in chains.items()}
        out["refs"] = [run_main(*CONFIG, *extra, f"--run_dir={tmp / name}")
                       for name, extra in (("ref1", []), ("ref2", TWO_REPLICAS))]
        for name, (extra, chain) in chains.items():
            if killed[name].result():
                _run_links(tmp / name, extra, chain[_killed_links(chain):], out[name])
    return tmp, out


def _state(run_dir: Path) -> dict:
    """Every tensor of the final checkpoint except the save counter and the JSON run state
    (whose history has wall-clock fields; results.json is compared separately)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    names = [n for n in reader.get_variable_to_shape_map()
             if not n.startswith(("save_counter", "run_state", "_CHECKPOINTABLE"))]
    return {n: reader.get_tensor(n) for n in names}


def _results(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    for key in WALL_CLOCK:
        results.pop(key, None)
    for epoch in results["epochs"]:
        for key in WALL_CLOCK:
            epoch.pop(key, None)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("chain,ref", [("chain1", "ref1"), ("chain2", "ref2")])
def test_killed_and_restarted_run_is_bitwise_identical(runs, chain, ref):
    tmp, out = runs
    ref_proc = out["refs"][0 if ref == "ref1" else 1]
    assert ref_proc.returncode == 0, ref_proc.stderr[-2000:]
    for proc, code, text, latest, found, _ in out[chain]:
        assert proc.returncode == code, (code, proc.stdout[-1500:], proc.stderr[-2500:])
        assert text in proc.stdout + proc.stderr, (text, proc.stderr[-1500:])
        assert found == latest
    assert len(out[chain]) == len(CHAIN_ONE_REPLICA if chain == "chain1" else CHAIN_TWO_REPLICAS)
    expected, got = _state(tmp / ref), _state(tmp / chain)
    assert sorted(expected) == sorted(got)
    assert any("rng" in n for n in got) and any("optimizer" in n for n in got)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert _results(tmp / chain) == _results(tmp / ref)
    assert _results(tmp / ref)["batch_size_per_epoch"] == [256, 512, 1024]


def test_interrupted_run_reports_status_and_how_to_resume(runs):
    tmp, out = runs
    sigterm, *_, status = out["chain1"][1]
    assert "rerun the same command to resume" in sigterm.stderr
    assert status == "interrupted"
    assert (tmp / "chain1" / "model.keras").exists()  # the completed run exported its model


def test_exported_model_holds_the_final_weights(runs):
    import keras

    tmp, _ = runs
    model = keras.models.load_model(tmp / "ref1" / "model.keras")
    digest = json.loads((tmp / "ref1" / "results.json").read_text())["weights_sha256"]
    import hashlib

    h = hashlib.sha256()
    for v in model.weights:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    assert h.hexdigest() == digest
