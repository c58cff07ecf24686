"""bench/cluster.py, bench/netns.py, bench/cost_model.py: the emulated-cluster benchmark.

- the cost model recovers known parameters from synthetic timings (pure numpy);
- rates parse, reach tc only in their validated whole-bits form, and a bad one is one `error:`
  line naming it and the fix (exit 2); the bench refuses to run without its tools;
- the namespace tool leaves no namespace or link behind: after a normal exit, after a worker
  that exits 1, and after SIGINT to the bench process; `--cleanup` removes what a bench killed
  with SIGKILL left (its PID is gone) and never a live PID's; workers run as nobody with no
  capabilities (these need root: skipped, with the reason, where network namespaces are not
  permitted: not root, or `ip netns add` fails);
- the smallest run (`--smoke`: 2 workers of a tiny CNN over a 100mbit link, the real CLI)
  completes (slow).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ..cli import REPO

sys.path.insert(0, str(REPO / "bench"))
import cluster  # noqa: E402
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


def needs_netns(test):
    """Root-only (marked needs_root); also skipped, with the reason, where `ip netns add` is
    refused (a container without the capability, iproute2 missing)."""
    refused = pytest.mark.skipif(REFUSED is not None, reason=str(REFUSED))
    return pytest.mark.needs_root(refused(test))


def _state() -> tuple[set[str], str]:
    """Namespaces and root-namespace links (names only) now."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = sorted(line.split(":")[1].strip() for line in links.splitlines())
    return netns.list_namespaces(), "\n".join(names)


def _ours(pid: int) -> set[str]:
    return {n for n in netns.list_namespaces() if n.startswith(f"klb-{pid}-")}


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"keras_largebatch.main" in f.read()
    except OSError:
        return False


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


def test_rates_reach_tc_only_validated_and_in_whole_bits():
    assert netns.tc_rate("100mbit") == "100000000bit"
    assert netns.tc_rate(" 1.5GBIT ") == "1500000000bit"
    assert netns.tc_rate("8kbit") == "8000bit"
    assert netns.tc_rate("none") is None and netns.tc_rate("unshaped") is None
    for bad in ("100 Mbps", "0mbit", "0.4bit", "1e9bit", "100mbit; reboot", "-5mbit", "",
                "99999999999gbit", 100):
        with pytest.raises(ValueError, match=re.escape(f"bad link rate {bad!r}")) as e:
            netns.tc_rate(bad)
        assert "100mbit" in str(e.value)  # the fix: what to give instead
    with pytest.raises(ValueError, match="bad link rate 'fast'"):
        netns.EmulatedCluster(2, rate="fast")  # refused before any namespace exists


@pytest.mark.parametrize("flag, value", [("--rates", "100 Mbps"), ("--experiment_rates", "0mbit"),
                                         ("--predict_rate", "fast")])
def test_a_bad_rate_is_one_error_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cluster.main([f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {flag}: bad link rate '{value}': give ") and "1gbit" in err
    assert "Traceback" not in err


def test_stale_namespaces_are_dead_pids_klb_names_only():
    names = {"klb-123-w0", "klb-123-br", "klb-456-w1", "klb-probe-9", "other", "klb-x-w0",
             "klb-123"}
    assert netns.stale_namespaces(names, alive=lambda pid: pid == 456) == ["klb-123-br",
                                                                           "klb-123-w0"]
    assert netns.stale_namespaces(names, alive=lambda pid: True) == []
    assert netns.pid_alive(os.getpid()) and netns.pid_alive(1)


def test_unknown_worker_user():
    with pytest.raises(netns.ClusterError, match="no user 'no-such-user-klb'.*--worker_user"):
        netns.worker_identity("no-such-user-klb")
    assert netns.worker_identity("nobody")[0] == int(
        subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)


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
    client = ("import socket, time\n"  # polls until the server listens (120 s at most)
              "deadline = time.monotonic() + 120\n"
              "while True:\n"
              "    try:\n"
              "        s = socket.create_connection(('10.253.0.1', 5000)); break\n"
              "    except OSError:\n"
              "        if time.monotonic() > deadline: raise\n"
              "        time.sleep(0.1)\n"
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
        # The workers are the training processes (ip netns exec, setpriv and taskset have
        # exec'd into them): polled, not a fixed wait.
        deadline = time.monotonic() + 120
        while not all(_is_worker(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_is_worker(pid) for pid in pids)
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
def test_tiny_two_worker_run_over_a_shaped_link():
    before = _state()
    # --smoke: TINY, --parts=experiment, --experiment_rates=100mbit, --examples=1024; the
    # workers (nobody) need a folder they can reach, which pytest's tmp_path (0700) is not.
    tmp_path = Path(tempfile.mkdtemp(prefix="klb-test-cluster-"))
    tmp_path.chmod(0o755)
    try:
        proc = subprocess.run([*BENCH, "--smoke", f"--keep_logs={tmp_path}"],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        workers_logs = list(tmp_path.glob("*/worker1.log"))
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"adabatch speed-up over fixed 128: \d+\.\d\dx at 100mbit "
                        r"\(accuracy \d\.\d{4} vs \d\.\d{4}\)", lines[-1]), lines[-1]
    assert "3. cost model" in proc.stdout
    assert len(workers_logs) == 4  # one per 2-worker run (fixed 128, 1024, AdaBatch, goodput)
    assert re.search(r"goodput 128\.\.1024 +128,", proc.stdout)  # its first epoch at the minimum
    assert _state() == before


# ---- --cleanup: what a bench killed with SIGKILL left ---------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not netns.pid_alive(proc.pid)
    return proc.pid


def _cleanup() -> subprocess.CompletedProcess:
    return subprocess.run([*BENCH, "--cleanup"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


@needs_netns
def test_cleanup_removes_a_dead_pids_namespaces_and_keeps_a_live_ones():
    dead, live = _dead_pid(), os.getpid()
    made = [f"klb-{dead}-w0", f"klb-{dead}-br", f"klb-{live}-cleanup"]
    for name in made:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc = _cleanup()
        assert proc.returncode == 0, proc.stderr
        assert f"removed klb-{dead}-w0" in proc.stdout and f"removed klb-{dead}-br" in proc.stdout
        assert f"kept klb-{live}-cleanup (PID {live} is alive)" in proc.stdout
        assert not _ours(dead)
        assert _ours(live) == {f"klb-{live}-cleanup"}
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_netns
def test_cleanup_after_a_bench_killed_with_sigkill():
    before = _state()
    holder = textwrap.dedent("""
        import sys, time
        import netns
        cluster = netns.EmulatedCluster(3, rate="100mbit").__enter__()
        print(" ".join([*cluster.namespaces, cluster.bridge_namespace]), flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=REPO / "bench",
                            stdout=subprocess.PIPE, text=True)
    try:
        names = set(proc.stdout.readline().split())
        assert len(names) == 4 and names == _ours(proc.pid)
    finally:
        proc.kill()  # SIGKILL: no atexit, no close()
        proc.wait()
        proc.stdout.close()
    assert _ours(proc.pid) == names  # left behind
    out = _cleanup()
    assert out.returncode == 0, out.stderr
    assert all(f"removed {n}" in out.stdout for n in names), out.stdout
    assert not _ours(proc.pid)
    assert _state() == before


@needs_netns
@pytest.mark.parametrize("user, uid", [("nobody", None), (None, "0")])
def test_workers_run_as_the_worker_user_without_capabilities(tmp_path, user, uid):
    uid = uid or subprocess.run(["id", "-u", "nobody"], capture_output=True,
                                text=True).stdout.strip()
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    show = ["sh", "-c", "id -u; grep CapEff /proc/self/status"]
    with netns.EmulatedCluster(2, user=user) as c:
        assert c.run([show, show], envs=[dict(os.environ)] * 2, cwd=REPO, logs=logs,
                     timeout=60) == [0, 0]
    for log in logs:
        lines = log.read_text().split()
        assert lines[0] == uid
        cap_eff = int(lines[-1], 16)
        assert (cap_eff == 0) == (user == "nobody"), lines  # root keeps its capabilities


@needs_netns
def test_access_problem_names_what_the_worker_user_cannot_reach(tmp_path):
    nobody = netns.worker_identity("nobody")
    open_dir = Path(tempfile.mkdtemp(prefix="klb-test-access-"))
    try:
        open_dir.chmod(0o777)
        assert netns.access_problem(nobody, run="/bin/sh", read="/etc/passwd",
                                    write=str(open_dir)) is None
        closed = tmp_path / "closed"
        closed.mkdir(mode=0o700)
        assert netns.access_problem(nobody, run="/bin/sh", read=str(closed / "x"),
                                    write=str(closed)) == (
            f"cannot read {closed / 'x'}, write in {closed}")
    finally:
        shutil.rmtree(open_dir)


@needs_netns
def test_a_worker_user_that_cannot_reach_the_work_folder_is_one_error_line(tmp_path):
    before = _state()
    closed = tmp_path / "logs"  # under pytest's 0700 folder: nobody cannot enter it
    proc = subprocess.run([*BENCH, "--smoke", "--worker_user=nobody", f"--keep_logs={closed}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: the workers' user nobody cannot ") and str(closed) in \
        errors[0] and "--worker_user=root" in errors[0]
    assert "Traceback" not in proc.stderr
    assert _state() == before


def test_time_to_accuracy_sums_the_filled_epoch_times_up_to_the_first_hit():
    import cluster_report

    def run(label, accuracies, times, batch=128):
        epochs = [{"batch_size": batch, "epoch_time_s": t, "test_accuracy": a}
                  for a, t in zip(accuracies, times)]
        return cluster_report.Measured(label, 2, "100mbit", {"epochs": epochs})

    slow = run("a", [0.70, 0.80, 0.86], [50.0, 10.0, 10.0])
    fast = run("b", [0.75, 0.86, 0.87], [40.0, 8.0, 8.0])
    cluster_report.fill_times([slow, fast])
    assert slow.epoch_times == [9.0, 10.0, 10.0]  # epoch 1: median of 10, 10, 8, 8 at batch 128
    assert cluster_report.time_to_accuracy(slow, 0.855) == pytest.approx(29.0)
    assert cluster_report.time_to_accuracy(fast, 0.855) == pytest.approx(17.0)  # 9 + 8
    assert cluster_report.time_to_accuracy(slow, 0.9) is None


def test_the_adabatch_experiment_has_a_goodput_arm_that_sets_only_its_bounds():
    exp = cluster.experiment("adabatch", 4)
    goodput = next(r for r in exp.runs if r.label.startswith("goodput"))
    assert "train.batch_schedule = @GoodputBatch()" in goodput.bindings
    assert "train.lr_scaling = 'adascale'" in goodput.bindings
    fixed = next(r for r in exp.runs if r.label == "fixed 128")
    assert set(fixed.bindings[2:]) <= set(goodput.bindings)   # fixed 128's LR schedule
