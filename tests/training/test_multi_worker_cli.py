"""Multi-worker training on localhost: two worker processes of the real CLI with TF_CONFIG on
127.0.0.1 (MultiWorkerMirroredStrategy), an AdaBatch phase switch, 280 updates.

1. Both workers end with the same weights, and the losses match a single-process 2-replica
   MirroredStrategy run to 1e-4.
2. One worker is SIGKILLed mid-run; the other ends by itself with one `error: lost contact
   ...` line and exit status 5; both are restarted with the same command and resume from the
   last checkpoint, ending with the weights of the uninterrupted multi-worker run.
3. SIGTERM to one worker: both save the same update and exit 143; rerun, both end bitwise
   equal to the uninterrupted run.
4. A worker whose peer never starts prints progress lines, then one `error:` line, exit 2.
5. A peer that hangs (SIGSTOP: its sockets stay open, it answers nothing): the other worker
   ends by itself, through the collective timeout, with one `error: lost contact ...` line,
   exit 5 (measured: in seconds, through TensorFlow's coordination-service heartbeat check).

Ports come from binding to port 0 on 127.0.0.1; every process is waited for with a timeout and
killed in `finally`. No check depends on this machine's speed: a process that should end by
itself must do so within a generous bound (TIMEOUT), far above the timeouts under test, so only
a hang fails it. The single-process reference runs in-process (tests/inprocess.py) meanwhile.
"""

import json
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ..cli import REPO, TINY, cli_command, error_lines, run_cli
from ..inprocess import run_main
from ..waiting import wait_until

B = "--gin_bindings="
# 12000 examples: global batch 64 for 187 updates, then 128 for 93 (AdaBatch), 280 in all.
CONFIG = [*TINY, B + "fashion_mnist.max_train_examples = 12000",
          B + "fashion_mnist.max_test_examples = 2000", B + "train.epochs = 2",
          B + "train.batch_schedule = @AdaBatch()", B + "AdaBatch.initial_batch_size = 64",
          B + "AdaBatch.interval_epochs = 1", B + "train.checkpoint_every_steps = 50",
          B + "train.deterministic = True"]
TIMEOUT = 900  # seconds per process: a bound for a hung one, far above a run on a loaded machine
SIGTERM_AT = 150  # worker 1 gets SIGTERM after this update; both save the next one (151)
RUN_DIR_FILES = {"checkpoints", "config.gin", "history.json", "model.keras", "results.json",
                 "tensorboard", ".keras_largebatch_run"}  # the last: the run marker (run_dir.py)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def run_workers(run_dir: Path, ports: list[int], logs: Path, *, kill_worker_at: int = 0,
                last_worker_faults: tuple = (), config: tuple = tuple(CONFIG),
                ) -> list[tuple[int, str]]:
    """Start one CLI process per port; return [(exit status, output)] per worker.

    With `kill_worker_at`, the last worker SIGKILLs itself after that update; the others must
    then end by themselves (lost contact, exit 5) within TIMEOUT. `last_worker_faults`: other
    tests/faults.py specs for the last worker.
    """
    procs, outputs = [], []
    try:
        for index in range(len(ports)):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "TF_CONFIG": tf_config(ports, index)}
            faults = ([f"kill_at_step={kill_worker_at}"]
                      if kill_worker_at and index == len(ports) - 1 else [])
            if index == len(ports) - 1:
                faults += list(last_worker_faults)
            log = open(logs / f"worker{index}.log", "w")  # closed in finally
            outputs.append(log)
            procs.append(subprocess.Popen(
                [*cli_command(faults), *config, f"--run_dir={run_dir}"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in outputs:
            log.close()
    return [(p.returncode, (logs / f"worker{i}.log").read_text()) for i, p in enumerate(procs)]


def _digest(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("Final weights sha256: ")]
    assert len(lines) == 1, output[-2000:]
    return lines[0].split()[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi_worker")
    for name in ("plain", "killed", "resumed", "sigterm", "sigterm_resumed"):
        (tmp / name).mkdir()

    def killed_then_resumed():
        ports = free_ports(2)
        killed = run_workers(tmp / "run_killed", ports, tmp / "killed", kill_worker_at=120)
        return killed, run_workers(tmp / "run_killed", ports, tmp / "resumed")

    def sigterm_then_resumed():
        ports = free_ports(2)
        stopped = run_workers(tmp / "run_sigterm", ports, tmp / "sigterm",
                              last_worker_faults=(f"signal_at_step={SIGTERM_AT}:SIGTERM",))
        return stopped, run_workers(tmp / "run_sigterm", ports, tmp / "sigterm_resumed")

    with ThreadPoolExecutor(max_workers=3) as pool:
        plain = pool.submit(run_workers, tmp / "run", free_ports(2), tmp / "plain")
        chain = pool.submit(killed_then_resumed)
        sigterm = pool.submit(sigterm_then_resumed)
        reference = run_main(*CONFIG, B + "make_strategy.num_cpu_replicas = 2",
                             f"--run_dir={tmp / 'ref'}")  # in this process, meanwhile
        return tmp, plain.result(), reference, chain.result(), sigterm.result()


@pytest.mark.slow
def test_two_workers_agree_and_match_two_replicas(runs):
    tmp, workers, reference, *_ = runs
    for code, output in workers:
        assert code == 0, output[-3000:]
        assert "Epoch 2/2 (global batch 128, 93 steps)" in output
    assert _digest(workers[0][1]) == _digest(workers[1][1])  # same weights on both workers
    assert reference.returncode == 0, reference.stderr[-2000:]
    got = json.loads((tmp / "run" / "results.json").read_text())
    want = json.loads((tmp / "ref" / "results.json").read_text())
    assert got["replicas"] == want["replicas"] == 2
    assert got["batch_size_per_epoch"] == want["batch_size_per_epoch"] == [64, 128]
    for key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        np.testing.assert_allclose([e[key] for e in got["epochs"]],
                                   [e[key] for e in want["epochs"]], atol=1e-4, err_msg=key)
    # Only the chief writes the run dir; worker 1's checkpoints went to a private temp dir.
    assert {p.name for p in (tmp / "run").iterdir()} == RUN_DIR_FILES


@pytest.mark.slow
def test_killed_worker_job_resumes_from_the_last_checkpoint(runs):
    tmp, workers, _, (killed, resumed), _ = runs
    assert killed[1][0] == -9, killed[1][1][-2000:]  # the worker that was killed
    # The survivor ended by itself (run_workers waits, it kills nobody): one line, exit 5.
    code, output = killed[0]
    lost = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 5 and len(lost) == 1, output[-3000:]
    assert lost[0].startswith("error: lost contact with worker 127.0.0.1:"), lost
    assert "(index 1) during training after update 120" in lost[0], lost
    assert "the last checkpoint is " in lost[0] and "ckpt-100;" in lost[0], lost
    assert "restart every worker with the same command to resume" in lost[0], lost
    for code, output in resumed:
        assert code == 0, output[-3000:]
        assert "at epoch 1, step 100, from" in output  # ckpt-100: the last before update 120
    digests = {_digest(output) for _, output in resumed}
    assert digests == {_digest(workers[0][1])}  # = the uninterrupted multi-worker run
    assert {p.name for p in (tmp / "run_killed").iterdir()} == RUN_DIR_FILES


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_at_the_same_update(runs):
    tmp, workers, _, _, (stopped, resumed) = runs
    for index, (code, output) in enumerate(stopped):
        assert code == 143, output[-3000:]
        peer = "" if index == 1 else " (received by another worker)"
        assert (f"interrupted by SIGTERM{peer} at epoch 1, step {SIGTERM_AT + 1}; saved "
                f"{tmp / 'run_sigterm' / 'checkpoints' / f'ckpt-{SIGTERM_AT + 1}'}") in output
    for code, output in resumed:
        assert code == 0, output[-3000:]
        assert f"at epoch 1, step {SIGTERM_AT + 1}, from" in output
    digests = {_digest(output) for _, output in resumed}
    assert digests == {_digest(workers[0][1])}  # bitwise = the uninterrupted run
    results = json.loads((tmp / "run_sigterm" / "results.json").read_text())
    assert results["weights_sha256"] == _digest(workers[0][1])


@pytest.mark.slow
def test_worker_whose_peer_never_starts_gives_up_with_one_line(tmp_path):
    ports = free_ports(2)
    env = {"TF_CONFIG": tf_config(ports, 0)}
    # Ends by itself: within TIMEOUT (far above the 15 s), or run_cli raises TimeoutExpired.
    proc = run_cli(*TINY, B + "make_strategy.connect_timeout_s = 15",
                   f"--run_dir={tmp_path / 'run'}", env=env, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    awaited = f"127.0.0.1:{ports[1]} (index 1)"
    assert f"waiting for workers {awaited} (10 s of 15)" in proc.stderr
    assert error_lines(proc) == [
        f"error: workers {awaited} did not come up within make_strategy.connect_timeout_s=15 s; "
        f"start the same command on every worker with its own TF_CONFIG task index, check the "
        f"addresses and firewall, or raise make_strategy.connect_timeout_s"]
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_worker_whose_peer_hangs_ends_within_the_collective_timeout(tmp_path):
    ports, timeout_s, stop_at = free_ports(2), 20, 60
    config = [*CONFIG, B + f"make_strategy.collective_timeout_s = {timeout_s}"]
    procs, logs = [], []
    try:
        for index in range(2):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": tf_config(ports, index)}
            logs.append(open(tmp_path / f"worker{index}.log", "w"))  # closed in finally
            faults = [f"stop_at_step={stop_at}"] if index == 1 else []
            procs.append(subprocess.Popen(
                [*cli_command(faults), *config, f"--run_dir={tmp_path / 'run'}"],
                cwd=REPO, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        wait_until(lambda: procs[0].poll() is not None or _stopped(procs[1].pid),
                   timeout=TIMEOUT, what=f"worker 1 to stop itself at update {stop_at}")
        assert _stopped(procs[1].pid), "worker 0 ended before its peer hung"
        # Ends by itself within TIMEOUT (far above the 20 s collective timeout); a survivor
        # that waited for the hung peer for ever would raise TimeoutExpired here.
        procs[0].wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # the stopped worker too (SIGKILL ends a stopped process)
                p.wait()
        for log in logs:
            log.close()
    output = (tmp_path / "worker0.log").read_text()
    lost = [line for line in output.splitlines() if line.startswith("error:")]
    assert procs[0].returncode == 5 and len(lost) == 1, output[-3000:]
    assert lost[0].startswith("error: lost contact with "), lost
    assert f"during training after update {stop_at}" in lost[0], lost
    assert "the last checkpoint is " in lost[0] and "ckpt-50;" in lost[0], lost
    assert "Traceback" not in output
    # TensorFlow's collective timeout (or its coordination service's heartbeat, whichever
    # fires first) ended the survivor; the peer it lost still accepts connections (hung).
    assert "(it still accepts connections: hung, or slower than make_strategy." in lost[0], lost


def _stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (state T in /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")
