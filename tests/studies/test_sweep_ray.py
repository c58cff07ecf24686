"""`studies.sweep --executor=ray` on a real local Ray cluster: same results as the local sweep,
a killed driver resumes, a run whose Ray worker dies is retried and resumes from its checkpoint.

The cluster is `ray.cluster_utils.Cluster`: a head node and a second node, each with its own
GCS / raylet / Ray worker processes, 1 CPU each (so two runs train at once, one per node); the
module starts it once and shuts down only the processes it started. Both nodes share this
machine's file system, as a real cluster shares the sweep folder.

The study: 4 tiny runs, `train.deterministic = True` (and 1 TF thread per run under both
executors), two of them forced to diverge (LR 1e6). The runs are started through a `python`
wrapper that makes one chosen run (`learning_rate=0.05__epochs=6`), once armed, hold after
update 20 (tests/faults.py `hold_at_step`, writing its PID), so the test can kill its Ray worker
and the run at a known point; every other start is the plain CLI.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import grid
from keras_largebatch.studies import results as rs
from keras_largebatch.studies import sweep as sw
from keras_largebatch.studies.executors import RayOptions

from ..cli import REPO
from .test_hparams import _dashboard

STUDY = """
sweep.base_gin_files = ['gin/tests/tiny.gin']
sweep.base_bindings = ['fashion_mnist.max_train_examples = 2000',
                       'fashion_mnist.max_test_examples = 1000',
                       'train.batch_size = 250', 'train.deterministic = True']
sweep.grid = {'train.learning_rate': [1e6, 0.05], 'train.epochs': [2, 6]}
"""
RUNS = ["learning_rate=1e+06__epochs=2", "learning_rate=1e+06__epochs=6",
        "learning_rate=0.05__epochs=2", "learning_rate=0.05__epochs=6"]
TARGET = RUNS[3]   # 8 updates per epoch: held after update 20 (epoch 3), checkpoint at 16
HOLD_AT = 20

WRAPPER = """#!{python}
# The runs' `python`: the plain CLI, except TARGET's first start once ARM exists (hold there).
import os, sys
args = sys.argv[1:]
if (os.path.exists({arm!r}) and not os.path.exists({flag!r})
        and any(a.endswith("/" + {target!r}) for a in args)):
    os.execv({python!r}, [{python!r}, "-m", "tests.faults", "hold_at_step={at}:{flag}", "--",
                          *args[2:]])
os.execv({python!r}, [{python!r}, *args])
"""

ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
              "TF_CPP_MIN_LOG_LEVEL": "3"}


def _wait_for(condition, what: str, timeout: float = 300, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll)
    return value


def _processes_with(text: str) -> list[int]:
    """PIDs whose command line contains `text` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def _ppid_and_state(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _gone(pid: int) -> bool:
    try:
        return _ppid_and_state(pid)[1] in "ZX"
    except OSError:
        return True


def _log(out: Path, name: str) -> str:
    return (out / "logs" / f"{name}.log").read_text()


def _values(out: Path, name: str) -> dict:
    """What the two executors must agree on: status, every epoch's numbers, final weights."""
    results = rs.read_results(str(out / name))
    epochs = [{k: e.get(k) for k in ("epoch", "train_loss", "test_loss", "test_accuracy")}
              for e in results["epochs"]]
    return {"status": results["status"], "epochs": json.dumps(epochs),
            "diverged_epoch": results.get("diverged_epoch"),
            "weights_sha256": results.get("weights_sha256")}


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a second node on this machine (1 CPU each); its GCS address."""
    pytest.importorskip("ray", reason="make test installs Ray (pip install -e '.[ray]')")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    os.makedirs(os.path.join(temp, "ray"))
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", *ONE_THREAD)}
    os.environ.update({"RAY_TMPDIR": temp, **ONE_THREAD})  # the nodes' workers inherit them
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "temp_dir": os.path.join(temp, "ray"), "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        yield cluster.address
    finally:
        if cluster is not None:
            cluster.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp, ignore_errors=True)


def _driver(flags: list[str], python: str, **kwargs) -> subprocess.Popen:
    """`python -m keras_largebatch.studies.sweep FLAGS`, its runs started by `python`."""
    code = (f"import sys; sys.executable = {python!r}; "
            "from keras_largebatch.studies import sweep; sweep.run()")
    return subprocess.Popen([sys.executable, "-c", code, *flags], cwd=REPO,
                            env={**os.environ, **ONE_THREAD}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.fixture(scope="module")
def study_runs(ray_cluster, tmp_path_factory):
    """The study locally, then through Ray: driver killed after its first run, rerun with the
    target run armed; while the target holds, its Ray worker and the run are killed."""
    root = tmp_path_factory.mktemp("ray_sweep")
    study_file = root / "tiny_ray.gin"
    study_file.write_text(STUDY)
    arm, flag = root / "arm", root / "held_pid"
    wrapper = root / "python"
    wrapper.write_text(WRAPPER.format(python=sys.executable, arm=str(arm), flag=str(flag),
                                      target=TARGET, at=HOLD_AT))
    wrapper.chmod(0o755)

    local = root / "local"
    os.environ.update(ONE_THREAD)  # set for the module by ray_cluster; restored there
    study = grid.load_study([str(study_file)])
    sw.run_sweep(study, sweep_dir=str(local), parallel=2, echo=lambda _: None)

    out = root / "ray"
    flags = [f"--gin_file={study_file}", f"--sweep_dir={out}", "--noplot", "--executor=ray",
             f"--ray_address={ray_cluster}"]
    first = _driver(flags, str(wrapper), start_new_session=True)
    _wait_for(lambda: rs.is_finished(str(out / RUNS[0])) or first.poll() is not None,
              f"{RUNS[0]} to finish")
    os.killpg(first.pid, signal.SIGKILL)
    killed_output = first.communicate()[0]
    # Ray ends the dead driver's tasks: their workers die, each run gets SIGTERM (PDEATHSIG)
    _wait_for(lambda: not _processes_with(f"--run_dir={out}/"), "the runs to end", 120)
    finished = {n: (out / n / rs.RESULTS_FILE).stat().st_mtime_ns for n in RUNS
                if rs.is_finished(str(out / n))}

    arm.write_text("")
    second = _driver(flags, str(wrapper))
    pid = int(_wait_for(lambda: flag.exists() and flag.read_text(), "the target to hold"))
    worker, _ = _ppid_and_state(pid)
    # A node dying: the worker frozen first (it cannot see its run end), the run SIGKILLed
    # (no checkpoint at the kill; its flock is freed), then the worker SIGKILLed.
    os.kill(worker, signal.SIGSTOP)
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: _gone(pid), "the held run to die", 60)
    os.kill(worker, signal.SIGKILL)
    resumed_output = second.communicate(timeout=400)[0]
    return {"local": local, "out": out, "killed_output": killed_output, "finished": finished,
            "second": second, "resumed_output": resumed_output, "held": (pid, worker)}


@pytest.mark.slow  # a 2-node Ray cluster and ~9 real CLI runs: ~2 min on 2 busy cores
def test_ray_sweep_gives_the_local_results(study_runs):
    second, out = study_runs["second"], study_runs["out"]
    assert second.returncode == 0, study_runs["resumed_output"][-3000:]
    for name in RUNS:
        assert _values(out, name) == _values(study_runs["local"], name), name
    for name in RUNS[:2]:  # diverged, recorded with its epoch, as locally
        assert _values(out, name)["status"] == "diverged"
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[1].startswith(f"{RUNS[0]},1000000.0,2,diverged,1,")
    assert (out / "summary.csv").read_text().count(",completed,") == 2
    # the HParams dashboard lists the 4 runs with their grid values, and the same metrics
    ray_sessions, local_sessions = _dashboard(out), _dashboard(study_runs["local"])
    assert set(ray_sessions) == set(RUNS)
    for name, lr, epochs in zip(RUNS, [1e6, 1e6, 0.05, 0.05], [2, 6, 2, 6]):
        values, metrics, _ = ray_sessions[name]
        assert values == {"train.learning_rate": lr, "train.epochs": epochs}
        assert ({k: v for k, v in metrics.items() if k != "study/training_time_s"}
                == {k: v for k, v in local_sessions[name][1].items()
                    if k != "study/training_time_s"})
    assert ray_sessions[RUNS[1]][1]["study/diverged_epoch"] == 1


@pytest.mark.slow
def test_killed_driver_resumes_and_skips_finished_runs(study_runs):
    assert RUNS[0] in study_runs["finished"]
    assert f"submit {RUNS[0]}" in study_runs["killed_output"]
    for name, mtime in study_runs["finished"].items():
        assert f"skip {name}: " in study_runs["resumed_output"]
        assert (study_runs["out"] / name / rs.RESULTS_FILE).stat().st_mtime_ns == mtime
        assert _log(study_runs["out"], name).count("=== ") == 1  # started once, by driver 1
    for name in set(RUNS) - set(study_runs["finished"]):
        assert f"submit {name}" in study_runs["resumed_output"]


@pytest.mark.slow
def test_a_run_whose_worker_dies_is_retried_and_resumes_from_its_checkpoint(study_runs):
    out = study_runs["out"]
    log = _log(out, TARGET)
    # The header is the job's command (the wrapper); the held start ends without a result in
    # epoch 3 (killed there), the next start is Ray's retry of the task, the last one.
    *_, held, retry = log.split("=== ")
    assert "Epoch 3/6" in held and "Final weights" not in held, log[-3000:]
    # the retry resumed from the end of epoch 2 (update 16), not from zero
    assert f"Resuming {out / TARGET} at epoch 3, step 0" in retry, retry[:2000]
    assert "Epoch 1/6" not in retry and "Final weights sha256" in retry
    results = rs.read_results(str(out / TARGET))
    assert results["status"] == "completed" and len(results["epochs"]) == 6
    assert all(_gone(p) for p in study_runs["held"])


# Also the case of a Ray started where SIGINT is ignored (a background job: make test run with
# `&`): ray.cancel's interrupt reached no task until executors._interruptible (BUILD_NOTES).
@pytest.mark.slow  # one more driver and run on the module's cluster: ~30 s
def test_sigterm_to_the_driver_stops_the_runs_with_a_checkpoint(ray_cluster, tmp_path):
    study_file = tmp_path / "long.gin"
    study_file.write_text(STUDY.replace("'train.epochs': [2, 6]", "'train.epochs': [500]")
                          .replace("[1e6, 0.05]", "[0.05]"))
    out, name = tmp_path / "out", "learning_rate=0.05__epochs=500"
    driver = _driver([f"--gin_file={study_file}", f"--sweep_dir={out}", "--noplot",
                      "--executor=ray", f"--ray_address={ray_cluster}"], sys.executable)
    _wait_for(lambda: (out / "logs" / f"{name}.log").exists()
              and "Epoch 2/500" in _log(out, name) or driver.poll() is not None,
              "the run's second epoch")
    driver.send_signal(signal.SIGTERM)
    output = driver.communicate(timeout=200)[0]
    assert driver.returncode == 130, output[-3000:]
    assert "interrupted (SIGTERM): stopping 1 run(s)" in output
    results = rs.read_results(str(out / name))  # ray.cancel -> the task SIGTERMs its run
    assert (results["status"], results.get("interrupted_by")) == ("interrupted", "SIGTERM")
    assert "rerun the same command to resume" in _log(out, name)
    assert not _processes_with(f"--run_dir={out}/")


# ---- Bad input -----------------------------------------------------------------------------------

def test_without_ray_the_ray_executor_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    study = grid.sweep(grid={"train.learning_rate": [0.1]})
    with pytest.raises(UserInputError) as e:
        sw.run_sweep(study, sweep_dir=str(tmp_path / "out"), ray=RayOptions())
    assert e.value.line == ("--executor=ray needs Ray, which is not installed; install it with "
                            "pip install -e '.[ray]' (or pip install 'ray==2.60.0')")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"parallel": 2}, "--parallel=2 is for --executor=local"),
    ({"ray": RayOptions(num_cpus=0)}, "--num_cpus=0 must be a finite number > 0"),
    ({"ray": RayOptions(num_gpus=-1)}, r"--num_gpus=-1 must be a number in \[0, 1e\+06\]"),
    ({"ray": RayOptions(max_retries=-1)}, "--max_retries=-1 must be >= 0"),
    ({"ray": RayOptions(address="headnode")}, "--ray_address=headnode is not 'auto' or "
                                              "host:port"),
    ({"ray": RayOptions(address="127.0.0.1:99999")}, "--ray_address=127.0.0.1:99999 is not"),
])
def test_bad_ray_options_name_the_value(tmp_path, kwargs, message):
    pytest.importorskip("ray", reason="make test installs Ray (pip install -e '.[ray]')")
    kwargs = {"ray": RayOptions(), **kwargs}
    with pytest.raises(UserInputError, match=message):
        sw.run_sweep(grid.sweep(grid={"train.learning_rate": [0.1]}),
                     sweep_dir=str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_dead_ray_address_is_refused_at_once(tmp_path):
    """ray.init retries an address where nothing listens for minutes; the sweep checks first."""
    pytest.importorskip("ray", reason="make test installs Ray (pip install -e '.[ray]')")
    with socket.socket() as s:  # a port that was free a moment ago, closed again
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(UserInputError, match=f"--ray_address=127.0.0.1:{port}: nothing answers"):
        sw.run_sweep(grid.sweep(grid={"train.learning_rate": [0.1]}),
                     sweep_dir=str(tmp_path / "out"), ray=RayOptions(address=f"127.0.0.1:{port}"))
    # Refused at the sweep's own connect (10 s timeout at most), not after Ray's minutes of
    # retries: a bound far above the first, far below the second, so machine speed cannot fail it.
    assert time.monotonic() - start < 120
    assert not (tmp_path / "out").exists()


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """The sweep command in this process on its own flag values: exit status, stderr lines."""
    from absl import flags

    values = flags.FlagValues()
    sw._define_flags(values)
    values(["sweep", *argv])
    with pytest.raises(SystemExit) as exit_:
        sw.main(["sweep"], values)
    return exit_.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("flags, message", [
    (["--executor=ray"], "error: --executor=ray needs Ray, which is not installed; install it "
                         "with pip install -e '.[ray]' (or pip install 'ray==2.60.0')"),
    (["--ray_address=auto"], "error: --ray_address is for --executor=ray; add --executor=ray or "
                             "drop --ray_address"),
    (["--num_gpus=1"], "error: --num_gpus is for --executor=ray; add --executor=ray or drop "
                       "--num_gpus"),
])
def test_the_command_ends_bad_ray_input_with_one_error_line(tmp_path, capsys, monkeypatch,
                                                            flags, message):
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray hidden: `import ray` raises ImportError
    study = tmp_path / "study.gin"
    study.write_text("sweep.grid = {'train.learning_rate': [0.1]}\n")
    code, err = _cli([f"--gin_file={study}", f"--sweep_dir={tmp_path / 'out'}", *flags], capsys)
    assert (code, err) == (2, [message])
    assert not (tmp_path / "out").exists()
