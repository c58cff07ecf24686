"""bench/cluster.py, bench/netns.py, bench/cost_model.py: the emulated-cluster benchmark.

- the cost model recovers known parameters from synthetic timings (pure numpy);
- rates parse, and the bench refuses to run (one `error:` line, exit 2) without its tools;
- the namespace tool leaves no namespace or link behind: after a normal exit, after a worker
  that exits 1, and after SIGINT to the bench process (skipped where network namespaces are not
  permitted: not root, or `ip netns add` fails);
- a tiny 2-worker run of the real CLI over a 100mbit link completes (slow).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ..cli import REPO

sys.path.insert(0, str(REPO / "bench"))
import cost_model  # noqa: E402
import netns  # noqa: E402

BENCH = [sys.executable, str(REPO / "bench" / "cluster.py")]
TINY = ["--model=cnn_fashion", "--gin_bindings=cnn_fashion.filters = (8, 16)",
        "--test_examples=200", "--epochs=2"]


def _namespaces_refused() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "ip/tc (iproute2) not installed"
    name = f"klb-probe-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return f"`ip netns add` not permitted here: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


REFUSED = _namespaces_refused()
needs_netns = pytest.mark.skipif(REFUSED is not None, reason=str(REFUSED))


def _state() -> tuple[set[str], str]:
    """Namespaces and root-namespace links (names only) now."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = sorted(line.split(":")[1].strip() for line in links.splitlines())
    return netns.list_namespaces(), "\n".join(names)


def _ours(pid: int) -> set[str]:
    return {n for n in netns.list_namespaces() if n.startswith(f"klb-{pid}-")}


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ---- cost model (pure numpy) ---------------------------------------------------------------------

TRUE = cost_model.CostModel(a=0.004, c=0.0009, alpha=0.012, beta=1.3)


def _synthetic(noise: float = 0.0, seed: int = 0) -> list[cost_model.Observation]:
    rng = np.random.default_rng(seed)
    obs = []
    for workers in (1, 2, 4):
        for batch in (128, 256, 512, 1024):
            for rate in ((None,) if workers == 1 else (1e8, 1e9, 1e10)):
                t = TRUE.step_time(workers, batch, rate, 270_000)
                obs.append(cost_model.Observation(workers, batch, rate, 270_000,
                                                  t * (1 + noise * rng.standard_normal())))
    return obs


def test_cost_model_recovers_known_parameters():
    got = cost_model.fit(_synthetic())
    assert got.rank == 4
    np.testing.assert_allclose([got.a, got.c, got.alpha, got.beta],
                               [TRUE.a, TRUE.c, TRUE.alpha, TRUE.beta], rtol=1e-6)


def test_cost_model_with_noise_and_predictions():
    got = cost_model.fit(_synthetic(noise=0.01))
    np.testing.assert_allclose([got.c, got.beta], [TRUE.c, TRUE.beta], rtol=0.05)
    # Ring all-reduce: 2 (W-1)/W x 4 bytes x params, per worker.
    assert cost_model.moved_bits(2, 1000) == 32_000
    assert cost_model.moved_bits(4, 1000) == 48_000
    # An epoch drops the remainder, as the CLI does.
    assert TRUE.epoch_time(2, 1024, 6400, 1e8, 1000) == pytest.approx(
        6 * TRUE.step_time(2, 1024, 1e8, 1000))


def test_cost_model_keeps_coefficients_non_negative():
    # Timings that fall with the rate term: an unconstrained fit would give beta < 0.
    obs = [cost_model.Observation(2, 256, r, 100_000, t)
           for r, t in ((1e8, 0.10), (1e9, 0.12), (1e10, 0.125))]
    got = cost_model.fit(obs)
    assert min(got.a, got.c, got.alpha, got.beta) >= 0
    assert got.rank < 4


# ---- options and refusal ------------------------------------------------------------------------

def test_parse_rate():
    assert netns.parse_rate("100mbit") == 1e8
    assert netns.parse_rate("10gbit") == 1e10
    assert netns.parse_rate("unshaped") is None
    with pytest.raises(ValueError, match="bad link rate"):
        netns.parse_rate("100 Mbps")


def test_requirements():
    assert "root" in netns.requirements_error(euid=1000)
    assert "tc" in netns.requirements_error(
        euid=0, which=lambda tool: None if tool == "tc" else "/x")


def test_refuses_without_ip_and_tc():
    proc = subprocess.run(BENCH, cwd=REPO, env={**os.environ, "PATH": "/nonexistent"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not found on PATH" in errors[0], proc.stderr


# ---- namespaces: created, used, removed ----------------------------------------------------------

@needs_netns
@pytest.mark.parametrize("workers", [2, 3])
def test_cluster_links_workers_and_cleans_up(tmp_path, workers):
    before = _state()
    server = ("import socket; s = socket.socket(); s.bind(('0.0.0.0', 5000)); s.listen(1); "
              "c, _ = s.accept(); print(len(c.recv(100)))")
    client = ("import socket, time\n"
              "for _ in range(100):\n"
              "    try:\n"
              "        s = socket.create_connection(('10.253.0.1', 5000)); break\n"
              "    except OSError: time.sleep(0.1)\n"
              "s.sendall(b'hello')")
    logs = [tmp_path / f"w{i}.log" for i in range(workers)]
    with netns.EmulatedCluster(workers, rate="100mbit", tag=f"klb-{os.getpid()}") as cluster:
        assert _ours(os.getpid()) == set(cluster.namespaces) | (
            {cluster.bridge_namespace} if workers > 2 else set())
        qdisc = subprocess.run(["tc", "-n", cluster.namespaces[1], "qdisc", "show", "dev",
                                "veth0"], capture_output=True, text=True).stdout
        assert "tbf" in qdisc and "100Mbit" in qdisc
        cluster.set_rate("1gbit")
        codes = cluster.run([[sys.executable, "-c", server], [sys.executable, "-c", client],
                             *[["true"]] * (workers - 2)],
                            envs=[dict(os.environ)] * workers, cwd=REPO, logs=logs,
                            timeout=60)
        assert codes == [0] * workers
        assert logs[0].read_text().strip() == "5"
    assert _state() == before


@needs_netns
def test_cleans_up_after_a_failed_worker(tmp_path):
    before = _state()
    started = []
    with pytest.raises(netns.WorkerFailed, match="worker 0 exited with status 1"):
        with netns.EmulatedCluster(2, rate="100mbit") as cluster:
            cluster.run([["sh", "-c", "sleep 1; exit 1"], ["sleep", "120"]],
                        envs=[dict(os.environ)] * 2, cwd=REPO,
                        logs=[tmp_path / "a.log", tmp_path / "b.log"], timeout=60,
                        on_start=started.extend)
    assert len(started) == 2 and all(_dead(pid) for pid in started)  # sleep 120 killed
    assert _state() == before


@needs_netns
@pytest.mark.slow
def test_sigint_to_the_bench_kills_workers_and_removes_namespaces():
    before = _state()
    proc = subprocess.Popen([*BENCH, *TINY, "--parts=experiment", "--experiment_rates=100mbit",
                             "--examples=1024"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pids, deadline = [], time.monotonic() + 240
        while not pids and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"pids ([\d ]+) \.\.\.", line)
            if m:
                pids = [int(p) for p in m.group(1).split()]
        assert pids, "the bench never started its workers"
        assert _ours(proc.pid)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT" in err
    assert all(_dead(pid) for pid in pids)
    assert not _ours(proc.pid)
    assert _state() == before


@needs_netns
@pytest.mark.slow
def test_tiny_two_worker_run_over_a_shaped_link(tmp_path):
    before = _state()
    proc = subprocess.run([*BENCH, *TINY, "--parts=experiment", "--experiment_rates=100mbit",
                           "--examples=1024", f"--keep_logs={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"adabatch speed-up over fixed 128: \d+\.\d\dx at 100mbit "
                        r"\(accuracy \d\.\d{4} vs \d\.\d{4}\)", lines[-1]), lines[-1]
    assert "3. cost model" in proc.stdout
    assert len(list(tmp_path.glob("*/worker1.log"))) == 3  # one per 2-worker run, kept
    assert _state() == before
