"""The sweep runner: study expansion, metrics, and runs of the real CLI (a killed 2x2 sweep with a
forced divergence, resumed). Runner details (failures, parallelism, the lock) use a fake CLI
that writes results.json in milliseconds."""

import csv
import math
import os
import re
import signal
import subprocess
import sys

import pytest

from keras_largebatch import allocator
from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import grid, summary
from keras_largebatch.studies import metrics as mx
from keras_largebatch.studies import results as rs
from keras_largebatch.studies import sweep as sw

from ..cli import REPO
from ..waiting import wait_until

TINY = ["fashion_mnist.max_train_examples = 2000", "fashion_mnist.max_test_examples = 1000",
        "train.epochs = 1"]


# ---- Study expansion and metrics (no processes) -------------------------------------------------

def test_study_is_variants_times_grid_with_later_bindings_winning():
    study = grid.sweep(base_gin_files=["gin/tests/tiny.gin"],
                       base_bindings=["train.epochs = 2"],
                       variants={"fixed": [], "ada": ["train.batch_schedule = @AdaBatch()"]},
                       grid={"train.batch_size": [32, 256], "StepDecay.initial": [0.5, "%LR"]},
                       metric="median_last5_test_accuracy")
    assert [r.name for r in study.runs] == [
        "fixed__batch_size=32__initial=0.5", "fixed__batch_size=32__initial=LR",
        "fixed__batch_size=256__initial=0.5", "fixed__batch_size=256__initial=LR",
        "ada__batch_size=32__initial=0.5", "ada__batch_size=32__initial=LR",
        "ada__batch_size=256__initial=0.5", "ada__batch_size=256__initial=LR"]
    run = study.runs[5]
    assert run.bindings == ("train.epochs = 2", "train.batch_schedule = @AdaBatch()",
                            "train.batch_size = 32", "StepDecay.initial = %LR")
    assert run.params == {"train.batch_size": 32, "StepDecay.initial": "%LR"}
    command = run.command("runs/x/" + run.name)
    assert command[1:3] == ["-m", "keras_largebatch.main"]
    assert command[3] == f"--gin_file={REPO / 'gin/tests/tiny.gin'}"
    assert command[-1] == "--run_dir=runs/x/ada__batch_size=32__initial=LR"


@pytest.mark.parametrize("kwargs, message", [
    ({}, "defines no runs"),
    ({"grid": {"train.batch_size": []}}, "non-empty list"),
    ({"grid": {"train batch": [1]}}, "not a binding name"),
    ({"grid": {"train.batch_size": [1]}, "metric": "accuracy"}, "sweep.metric = 'accuracy'"),
    ({"variants": {"a b": []}}, "must use only"),
    ({"variants": {"a": "train.epochs = 1"}}, "list of binding strings"),
    ({"variants": {"a": ["train.batch_size = 8"]}, "grid": {"train.batch_size": [1, 2]}},
     "sweep.grid also varies"),
    ({"grid": {"x.y": [1]}, "base_gin_files": ["gin/nope.gin"]}, "'gin/nope.gin', which does"),
    ({"grid": {"x.y": [1.0, 1]}}, "both named 'y=1'"),
    # one string where a list belongs (it used to be read letter by letter)
    ({"grid": {"x.y": [1]}, "base_bindings": "train.epochs = 1"},
     "sweep.base_bindings must be a list of strings"),
    ({"grid": {"x.y": [1]}, "base_gin_files": "gin/tests/tiny.gin"},
     "sweep.base_gin_files must be a list of strings"),
    ({"variants": ["train.epochs = 1"]}, "sweep.variants must be a dict"),
    ({"grid": [("train.batch_size", [1])]}, "sweep.grid must be a dict"),
])
def test_bad_studies_name_the_value(kwargs, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(")):
        grid.sweep(**kwargs)


def test_study_file_binds_only_sweep(tmp_path):
    path = tmp_path / "study.gin"
    path.write_text("# header\nsweep.base_gin_files = ['gin/tests/tiny.gin']\n"
                    "sweep.grid = {'train.learning_rate': [0.1, 0.01]}\n")
    study = grid.load_study([str(path)], ["sweep.metric = 'final_train_loss'"])
    assert [r.name for r in study.runs] == ["learning_rate=0.1", "learning_rate=0.01"]
    assert study.metric == "final_train_loss"
    path.write_text(path.read_text() + "train.epochs = 3\n")
    with pytest.raises(UserInputError, match="binds only sweep.*sweep.base_bindings"):
        grid.load_study([str(path)])


def test_run_metrics_are_the_papers():
    epochs = [{"epoch": i + 1, "test_accuracy": a, "train_loss": 1.0 / (i + 1),
               "batch_size": 100, "samples_per_second": 1000.0, "epoch_time_s": t}
              for i, (a, t) in enumerate(zip([0.5, 0.9, 0.6, 0.7, 0.8, 0.65, 0.75],
                                             [9.0, 2.0, 2.0, 3.0, 2.0, 2.0, 2.0]))]
    m = mx.run_metrics({"status": "completed", "epochs": epochs})
    assert m["status"] == "completed" and m["diverged_epoch"] is None and m["epochs"] == 7
    assert m["median_last5_test_accuracy"] == 0.7  # of 0.6 0.7 0.8 0.65 0.75
    assert m["best_test_accuracy"] == 0.9 and m["final_test_accuracy"] == 0.75
    assert m["lowest_test_error"] == pytest.approx(0.1)
    assert m["final_train_loss"] == pytest.approx(1 / 7)
    assert m["epoch_time_s"] == 2.0 and m["update_time_ms"] == pytest.approx(100.0)
    # above the study's bound from epoch 1: diverged there; a NaN loss in epoch 3: there
    assert mx.run_metrics({"status": "completed", "epochs": epochs},
                          loss_upper_bound=0.9)["diverged_epoch"] == 1
    epochs[2]["train_loss"] = math.nan
    bad = mx.run_metrics({"status": "completed", "epochs": epochs})
    assert (bad["status"], bad["diverged_epoch"]) == ("diverged", 3)
    # the loop's own record of the epoch wins (divergence.epoch; diverged_epoch: test_results)
    assert mx.run_metrics({"status": "diverged", "epochs": epochs,
                           "divergence": {"epoch": 5, "step": 40}})["diverged_epoch"] == 5


def test_validation_metrics_select_on_validation_and_report_test_there():
    """By hand: validation peaks at epochs 2 and 3 (0.85, a tie: the first wins), so the
    study reports epoch 2's test accuracy 0.84, neither the best test (0.90) nor the last."""
    val, test = [0.70, 0.85, 0.85, 0.80], [0.71, 0.84, 0.88, 0.90]
    epochs = [{"epoch": i + 1, "train_loss": 0.5, "validation_accuracy": v, "test_accuracy": t}
              for i, (v, t) in enumerate(zip(val, test))]
    m = mx.run_metrics({"status": "completed", "epochs": epochs})
    assert m["best_validation_accuracy"] == 0.85
    assert m["test_accuracy_at_best_validation"] == 0.84
    assert m["best_test_accuracy"] == 0.90 and m["final_test_accuracy"] == 0.90
    for e in epochs:  # no validation split held out: no choice
        del e["validation_accuracy"]
    m = mx.run_metrics({"status": "completed", "epochs": epochs})
    assert m["best_validation_accuracy"] is None
    assert m["test_accuracy_at_best_validation"] is None


def test_a_study_selected_on_validation_shows_test_at_that_choice(tmp_path):
    """summary.md picks the grid point with the best mean validation accuracy (lr 0.1 here,
    though lr 0.2 has the better test accuracy) and shows test accuracy at each run's choice
    as mean +- std over seeds (by hand: 0.80 and 0.84 -> 0.82 +- 0.0283)."""
    study = grid.sweep(grid={"train.learning_rate": [0.1, 0.2]}, seeds=[0, 1],
                       metric="best_validation_accuracy")
    per_run = {"learning_rate=0.1": ([0.86, 0.88], [0.80, 0.84]),
               "learning_rate=0.2": ([0.82, 0.83], [0.90, 0.91])}
    for spec in study.runs:
        point, seed = spec.name.split("__seed=")
        v, t = per_run[point][0][int(seed)], per_run[point][1][int(seed)]
        (tmp_path / spec.name).mkdir()
        rs.write_results(str(tmp_path / spec.name), {
            "status": "completed", "epochs": [
                {"epoch": 1, "train_loss": 0.5, "validation_accuracy": v - 0.1,
                 "test_accuracy": 0.5},
                {"epoch": 2, "train_loss": 0.4, "validation_accuracy": v, "test_accuracy": t}]})
    rows = summary.summary_rows(study, str(tmp_path), {})
    summary.write_summary(study, str(tmp_path), rows, "validation")
    md = (tmp_path / "summary.md").read_text()
    assert "Best grid point by mean `best_validation_accuracy`: learning_rate=0.1" in md
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols.index("best_validation_accuracy") < cols.index(
        "test_accuracy_at_best_validation")
    row = next(line for line in md.splitlines() if line.startswith("| learning_rate=0.1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[cols.index("test_accuracy_at_best_validation")] == "0.8200 +- 0.0283 (n=2)"
    # without seeds: one row per run, the test accuracy at the choice next to the metric
    single = grid.sweep(grid={"train.learning_rate": [0.1, 0.2]},
                        metric="best_validation_accuracy")
    for spec in single.runs:
        os.replace(tmp_path / f"{spec.name}__seed=0", tmp_path / spec.name)
    summary.write_summary(single, str(tmp_path), summary.summary_rows(single, str(tmp_path), {}),
                          "validation")
    header = next(line for line in (tmp_path / "summary.md").read_text().splitlines()
                  if line.startswith("| run |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols.index("test_accuracy_at_best_validation") == cols.index(
        "best_validation_accuracy") + 1


# ---- The runner, on a fake CLI -------------------------------------------------------------------

FAKE_MAIN = """
import json, os, sys, time
args = sys.argv[1:]
run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--run_dir="))
text = " ".join(args)
start = time.time()
overlapped = None
if "fake.rendezvous" in text:  # wait (bounded) until every run of the sweep has started
    here = os.path.dirname(os.path.abspath(run_dir))
    open(os.path.join(here, "started-" + os.path.basename(run_dir)), "w").close()
    while len([f for f in os.listdir(here) if f.startswith("started-")]) < 2:
        if time.time() > start + 300:
            break
        time.sleep(0.05)
    overlapped = len([f for f in os.listdir(here) if f.startswith("started-")]) >= 2
else:
    time.sleep(0.2)
if "train.crash" in text:
    print("Traceback ...\\nerror: bad gin config: fail", file=sys.stderr)
    sys.exit(2)
os.makedirs(run_dir, exist_ok=True)
diverged = "1000000.0" in text
epochs = [{"epoch": 1, "train_loss": float("nan") if diverged else 0.4,
           "test_accuracy": 0.1 if diverged else 0.8, "batch_size": 10,
           "samples_per_second": 100.0, "epoch_time_s": 1.0}]
with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump({"status": "diverged" if diverged else "completed", "epochs": epochs,
               "start": start, "end": time.time(), "overlapped": overlapped,
               "tcmalloc": any("libtcmalloc_minimal" in line for line in open("/proc/self/maps"))},
              f)
sys.exit(3 if diverged else 0)
"""


@pytest.fixture
def fake_python(tmp_path):
    script = tmp_path / "fake_main.py"
    script.write_text(FAKE_MAIN)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _headers(sweep_dir, name) -> int:
    return (sweep_dir / "logs" / f"{name}.log").read_text().count("=== ")


def test_failures_and_divergences_are_recorded_and_the_sweep_goes_on(tmp_path, fake_python):
    study = grid.sweep(variants={"good": [], "broken": ["train.crash = 1"]},
                       grid={"train.learning_rate": [0.1, 1e6]})
    out, lines = tmp_path / "sweep", []
    rows = sw.run_sweep(study, sweep_dir=str(out), python=fake_python, poll_s=0.05,
                        echo=lines.append)
    status = {r["run"]: (r["status"], r["diverged_epoch"], r["error"]) for r in rows}
    assert status == {
        "good__learning_rate=0.1": ("completed", None, ""),
        "good__learning_rate=1e+06": ("diverged", 1, ""),
        "broken__learning_rate=0.1": ("failed", None, "error: bad gin config: fail"),
        "broken__learning_rate=1e+06": ("failed", None, "error: bad gin config: fail")}
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == list(status)
    assert table[0]["variant"] == "good" and table[0]["train.learning_rate"] == "0.1"
    md = (out / "summary.md").read_text()
    assert "2 failed" in md
    assert "| good__learning_rate=1e+06 | good | 1e+06 | diverged | 1 |" in md
    assert "Best completed run by `best_test_accuracy`: good__learning_rate=0.1 (0.8000)" in md

    rows = sw.run_sweep(study, sweep_dir=str(out), python=fake_python, poll_s=0.05,
                        echo=lines.append)  # again: finished runs skipped, failed ones retried
    assert "skip good__learning_rate=0.1: completed" in lines
    assert "skip good__learning_rate=1e+06: diverged" in lines
    assert _headers(out, "good__learning_rate=0.1") == 1
    assert _headers(out, "broken__learning_rate=0.1") == 2


def test_parallel_runs_overlap(tmp_path, fake_python):
    """Each fake run waits until both have started (a rendezvous, bounded by 300 s): run one
    after the other, the first would give up and record overlapped = False."""
    study = grid.sweep(grid={"train.learning_rate": [0.1, 0.2]},
                       base_bindings=["fake.rendezvous = 1"])
    sw.run_sweep(study, sweep_dir=str(tmp_path), python=fake_python, parallel=2, poll_s=0.05,
                 echo=lambda _: None)
    (a, b) = (rs.read_results(str(tmp_path / f"learning_rate={lr}")) for lr in (0.1, 0.2))
    assert a["overlapped"] is True and b["overlapped"] is True
    assert a["start"] < b["end"] and b["start"] < a["end"]


@pytest.mark.skipif(not allocator.tcmalloc_available(), reason="libtcmalloc-minimal4 not "
                    "installed (make install installs it)")
def test_runs_get_tcmalloc_unless_opted_out(tmp_path, fake_python, monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)  # make test preloads it into pytest itself
    study = grid.sweep(grid={"train.learning_rate": [0.1]})
    sw.run_sweep(study, sweep_dir=str(tmp_path / "a"), python=fake_python, poll_s=0.05,
                 echo=lambda _: None)
    assert rs.read_results(str(tmp_path / "a" / "learning_rate=0.1"))["tcmalloc"] is True
    monkeypatch.setenv(allocator.OPT_OUT_VAR, "system")
    sw.run_sweep(study, sweep_dir=str(tmp_path / "b"), python=fake_python, poll_s=0.05,
                 echo=lambda _: None)
    assert rs.read_results(str(tmp_path / "b" / "learning_rate=0.1"))["tcmalloc"] is False


def test_a_busy_sweep_dir_is_refused(tmp_path, fake_python):
    fd = sw._lock(str(tmp_path))  # as a live sweep (or a run it started) holds it
    try:
        with pytest.raises(UserInputError, match="in use by another sweep.*sweep pid"):
            sw.run_sweep(grid.sweep(grid={"x.y": [1]}), sweep_dir=str(tmp_path),
                         python=fake_python)
    finally:
        os.close(fd)


# ---- The real CLI: 2x2 tiny grid, one forced divergence, killed after run 1, resumed ------------

GRID_RUNS = ["learning_rate=0.05__batch_size=250", "learning_rate=0.05__batch_size=500",
             "learning_rate=1e+06__batch_size=250", "learning_rate=1e+06__batch_size=500"]


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _sweep_cli(*args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return [sys.executable, "-m", "keras_largebatch.studies.sweep", *args], dict(
        cwd=REPO, env=env, text=True, **kwargs)


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    study = root / "tiny_study.gin"
    study.write_text(
        "sweep.base_gin_files = ['gin/tests/tiny.gin']\n"
        f"sweep.base_bindings = {TINY!r}\n"
        "sweep.grid = {'train.learning_rate': [0.05, 1e6], 'train.batch_size': [250, 500]}\n")
    out = root / "out"
    flags = [f"--gin_file={study}", f"--sweep_dir={out}", "--noplot"]

    cmd, kw = _sweep_cli(*flags, "--parallel=1", stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)
    first = subprocess.Popen(cmd, **kw)
    results = out / GRID_RUNS[0] / "results.json"
    wait_until(lambda: rs.is_finished(str(out / GRID_RUNS[0])) or first.poll() is not None,
               timeout=600, what=f"the sweep's first run {GRID_RUNS[0]} to finish")
    assert first.poll() is None, "the sweep ended before its first run finished"
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and the run it started next
    killed_output, _ = first.communicate()
    # a killed child can outlive its parent briefly under load
    wait_until(lambda: _group_gone(first.pid), timeout=120, what="the killed sweep's runs to end")
    mtime = results.stat().st_mtime_ns

    cmd, kw = _sweep_cli(*flags, "--parallel=2", capture_output=True)
    resumed = subprocess.run(cmd, timeout=400, **kw)
    return {"out": out, "mtime": mtime, "killed_output": killed_output,
            "resumed": resumed}


@pytest.mark.slow  # 4 real CLI runs: ~25 s CPU, ~90 s wall on 2 shared, busy cores
def test_real_sweep_writes_a_summary_row_per_run(real_sweep):
    resumed = real_sweep["resumed"]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    with open(real_sweep["out"] / "summary.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert list(rows) == GRID_RUNS
    for name in GRID_RUNS[:2]:
        assert rows[name]["status"] == "completed"
        assert float(rows[name]["best_test_accuracy"]) > 0.1  # chance is 0.1
    assert rows[GRID_RUNS[1]]["train.batch_size"] == "500"
    md = (real_sweep["out"] / "summary.md").read_text()
    assert md.count("\n| learning_rate=") == 4


@pytest.mark.slow  # 4 real CLI runs: ~25 s CPU, ~90 s wall on 2 shared, busy cores
def test_real_divergence_is_recorded_with_its_epoch(real_sweep):
    with open(real_sweep["out"] / "summary.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    for name in GRID_RUNS[2:]:
        assert (rows[name]["status"], rows[name]["diverged_epoch"]) == ("diverged", "1")
        results = rs.read_results(str(real_sweep["out"] / name))
        losses = [e["train_loss"] for e in results["epochs"]]  # empty if stopped mid-epoch
        reason = str((results.get("divergence") or {}).get("reason", ""))
        assert not all(map(math.isfinite, losses)) or re.search("nan|inf", reason, re.I)


@pytest.mark.slow  # 4 real CLI runs: ~25 s CPU, ~90 s wall on 2 shared, busy cores
def test_killed_sweep_resumes_without_rerunning_finished_runs(real_sweep):
    out, resumed = real_sweep["out"], real_sweep["resumed"]
    assert f"start {GRID_RUNS[0]}" in real_sweep["killed_output"]
    assert f"skip {GRID_RUNS[0]}: completed" in resumed.stdout
    assert (out / GRID_RUNS[0] / "results.json").stat().st_mtime_ns == real_sweep["mtime"]
    assert _headers(out, GRID_RUNS[0]) == 1  # launched once, in the killed sweep
    assert [f"start {n}" in resumed.stdout for n in GRID_RUNS] == [False, True, True, True]


def test_summary_cells_keep_small_losses_readable():
    assert summary.cell(0.8, True) == "0.8000" and summary.cell(0.0, True) == "0.0000"
    assert summary.cell(2.5636e-6, True) == "2.564e-06"  # not 0.0000
    assert summary.cell(0.00123, True) == "0.0012"
    assert summary.cell(12345.0, True) == "1.234e+04" and summary.cell(None) == ""
