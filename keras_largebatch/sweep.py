"""Run a study: a grid of gin bindings, one real `keras_largebatch.main` process per run.

    python -m keras_largebatch.sweep --gin_file=gin/studies/<study>.gin \\
        [--sweep_dir=runs/<study>] [--parallel=2] [--dry_run] [--noplot]

A study file binds only `sweep.*`; what the runs themselves train is named by
`sweep.base_gin_files` and bound by strings, so the sweep process never parses (or imports) the
runs' `train.*` configurables:

    sweep.description = 'seed 001 3.3: accuracy vs base LR, one curve per batch size'
    sweep.base_gin_files = ['gin/tests/tiny.gin']        # every run: --gin_file=...
    sweep.base_bindings = ['train.epochs = 4',           # every run: --gin_bindings=...
                           "train.lr_scaling = 'linear'"]
    sweep.variants = {'no_warmup': [],                   # named groups of bindings (optional)
                      'warmup': ['train.learning_rate = @LinearWarmup()', ...]}
    sweep.grid = {'train.batch_size': [32, 256],         # the product, per variant (optional)
                  'train.learning_rate': [0.001, 0.004]}  # literals only
    sweep.metric = 'median_last5_test_accuracy'          # the paper's metric (see METRICS)

Runs are `<variant>__<key>=<value>__...` folders of `--sweep_dir`; each gets
`base bindings + variant bindings + grid bindings` (later wins). Grid values are Python literals
written with repr(); a string starting with '@' or '%' is written verbatim (a gin reference or
macro). Rerunning the same command resumes: runs whose results.json has a final status
(completed, diverged) are skipped, the others are launched again with the same command and resume
from their checkpoints. A diverged run is recorded with its epoch and the sweep goes on; a run
that exits non-zero without results.json is recorded as failed (its log is in logs/<run>.log).
After every run, <sweep_dir>/summary.csv and summary.md are rewritten (one row per run: grid
values, status, diverged_epoch and every METRICS value); at the end the plots
(keras_largebatch.plot) are regenerated. <sweep_dir>/sweep.json keeps each run's command and
last outcome; logs/<run>.log its output.

`--parallel N` starts N runs at once and gives each cores/N TensorFlow threads. A lock on
<sweep_dir>/.sweep.lock, inherited by the runs, refuses a second sweep on the same folder while
this one or any run it started is alive. SIGTERM / Ctrl-C stop the running runs with SIGTERM
(they checkpoint and resume next time). `--dry_run` prints each run's command.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import functools
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from keras_largebatch.errors import UserInputError

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL_STATUSES = ("completed", "diverged")
SWEEP_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"

# name -> (what the papers call it, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "final_test_accuracy": ("test accuracy after the last epoch", True),
    "best_test_accuracy": ("best test accuracy over epochs (seed 002 Table 1)", True),
    "median_last5_test_accuracy": ("median test accuracy of the final 5 epochs (seed 001)", True),
    "lowest_test_error": ("lowest test error over epochs (seed 000)", False),
    "final_train_loss": ("training loss after the last epoch: on the whole training set with "
                         "train.eval_train_set, else the epoch's running mean (seed 002)", False),
    "epoch_time_s": ("median wall time per epoch, s (seed 000 Table 1)", False),
    "update_time_ms": ("median time per update (forward + backward + step), ms", False),
}
_BINDING_NAME = re.compile(r"^[A-Za-z_][\w./]*$")


# ---- The study: what the gin file configures ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study: its folder name, the grid values that name it, and its CLI flags."""

    name: str
    variant: str | None
    params: dict
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...]

    def command(self, run_dir: str, python: str = sys.executable) -> list[str]:
        return [python, "-m", "keras_largebatch.main",
                *(f"--gin_file={f}" for f in self.gin_files),
                *(f"--gin_bindings={b}" for b in self.bindings),
                f"--run_dir={run_dir}"]


@dataclasses.dataclass(frozen=True)
class Study:
    runs: tuple[RunSpec, ...]
    grid_keys: tuple[str, ...]
    metric: str
    description: str = ""
    loss_upper_bound: float | None = None
    base_lr_key: str | None = None


def gin_literal(value) -> str:
    """A grid value as gin text: repr(), except '@ref()' / '%MACRO' strings stay verbatim."""
    if isinstance(value, str) and value[:1] in "@%":
        return value
    return repr(value)


def _name_part(value) -> str:
    if isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, (list, tuple)):
        text = "x".join(_name_part(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def _binding_key(binding: str) -> str:
    return binding.split("=", 1)[0].strip()


def _resolve_gin_file(path: str) -> str:
    for base in (os.getcwd(), REPO_DIR):
        candidate = os.path.join(base, path)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise UserInputError(f"sweep.base_gin_files names {path!r}, which does not exist (relative "
                         f"paths are tried from the current folder and {REPO_DIR})")


def sweep(
    *,
    base_gin_files: Sequence[str] = (),
    base_bindings: Sequence[str] = (),
    grid: Mapping[str, Sequence] | None = None,
    variants: Mapping[str, Sequence[str]] | None = None,
    metric: str = "best_test_accuracy",
    description: str = "",
    loss_upper_bound: float | None = None,
    base_lr_key: str | None = None,
) -> Study:
    """Expand a study into its runs: variants x the product of the grid's values.

    `loss_upper_bound` additionally marks a run diverged at the first epoch whose training loss
    exceeds it (the runs' own `train.*` divergence handling stops them; this only classifies).
    `base_lr_key` names the binding that holds the run's LR for the seed-001 plot (default
    `train.learning_rate`); the plot converts it to eta/m with the run's scaling rule.
    """
    grid = dict(grid or {})
    variants = dict(variants or {})
    if metric not in METRICS:
        raise UserInputError(f"sweep.metric = {metric!r} is not one of {', '.join(METRICS)}")
    if not grid and not variants:
        raise UserInputError("the study defines no runs; set sweep.grid and/or sweep.variants")
    for key, values in grid.items():
        if not isinstance(key, str) or not _BINDING_NAME.match(key):
            raise UserInputError(f"sweep.grid key {key!r} is not a binding name like "
                                 "'train.batch_size'")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise UserInputError(f"sweep.grid[{key!r}] must be a non-empty list of values; "
                                 f"got {values!r}")
    for vname, bindings in variants.items():
        if not isinstance(vname, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", vname):
            raise UserInputError(f"sweep.variants name {vname!r} must use only letters, digits "
                                 "and _ . + -")
        if isinstance(bindings, str) or not all(isinstance(b, str) and "=" in b
                                                for b in bindings):
            raise UserInputError(f"sweep.variants[{vname!r}] must be a list of binding strings "
                                 f"like 'train.batch_size = 128'; got {bindings!r}")
        clash = {_binding_key(b) for b in bindings} & set(grid)
        if clash:
            raise UserInputError(f"sweep.variants[{vname!r}] binds {sorted(clash)[0]!r}, which "
                                 "sweep.grid also varies; bind it in one place only")
    for b in base_bindings:
        if not isinstance(b, str) or "=" not in b:
            raise UserInputError(f"sweep.base_bindings entry {b!r} is not a binding string like "
                                 "'train.epochs = 3'")
    gin_files = tuple(_resolve_gin_file(f) for f in base_gin_files)

    shorts = [k.rsplit(".", 1)[-1] for k in grid]
    labels = [s if shorts.count(s) == 1 else k for s, k in zip(shorts, grid)]
    runs = []
    for vname, vbindings in (variants.items() or [(None, [])]):
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            parts = ([vname] if vname else []) + [
                f"{label}={_name_part(v)}" for label, v in zip(labels, values)]
            runs.append(RunSpec(
                name="__".join(parts), variant=vname, params=params, gin_files=gin_files,
                bindings=(*base_bindings, *vbindings,
                          *(f"{k} = {gin_literal(v)}" for k, v in params.items()))))
    names = [r.name for r in runs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserInputError(f"two runs of the study are both named {duplicate!r}; make the grid "
                             "values distinct")
    return Study(runs=tuple(runs), grid_keys=tuple(grid), metric=metric,
                 description=description, loss_upper_bound=loss_upper_bound,
                 base_lr_key=base_lr_key)


def load_study(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> Study:
    """Parse study gin files (only `sweep.*` bindings) and expand them."""
    import gin

    gin.clear_config()
    configurable = gin.external_configurable(sweep, name="sweep", module="keras_largebatch")
    for path in (os.getcwd(), REPO_DIR):
        gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
    except Exception as e:  # gin raises many types for bad text
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserInputError(
            f"bad study config: {first} (a study file binds only sweep.*; the runs' bindings "
            "go in sweep.base_bindings or a file named in sweep.base_gin_files)") from None
    try:
        # Checked explicitly: whether gin knows `train` depends on what this process imported.
        for line in gin.config_str().splitlines():
            match = re.match(r"^([A-Za-z_][\w./]*)\.\w+ = ", line)
            if match and match.group(1).split("/")[-1] not in ("sweep", "keras_largebatch.sweep"):
                raise UserInputError(
                    f"bad study config: {line.split(' = ')[0]!r} is bound in the study (a study "
                    "file binds only sweep.*; the runs' bindings go in sweep.base_bindings or a "
                    "file named in sweep.base_gin_files)")
        return configurable()
    finally:
        gin.clear_config(clear_constants=True)


# ---- Reading a run's results -------------------------------------------------------------------

def read_results(run_dir: str) -> dict | None:
    """results.json as a dict, or None when missing, half-written or not a dict."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            data = json.load(f)  # accepts NaN / Infinity, which diverged runs contain
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finite(values) -> list[float]:
    return [v for v in (_number(x) for x in values) if v is not None and math.isfinite(v)]


def _loss_bad(epoch: dict, bound: float | None) -> bool:
    loss = _number(epoch.get("train_loss"))
    return loss is not None and (not math.isfinite(loss) or (bound is not None and loss > bound))


def _diverged_epoch(results: dict, epochs: list[dict], bound: float | None) -> int | None:
    for key in ("diverged_epoch", "divergence_epoch", "diverged_at_epoch"):
        if _number(results.get(key)) is not None:
            return int(results[key])
    info = results.get("divergence")
    if isinstance(info, dict) and _number(info.get("epoch")) is not None:
        return int(info["epoch"])
    for e in epochs:
        if _loss_bad(e, bound):
            return int(e.get("epoch", 0)) or None
    return int(epochs[-1].get("epoch", len(epochs))) if epochs else None


def run_metrics(results: dict, *, loss_upper_bound: float | None = None) -> dict:
    """status, diverged_epoch, epochs and every METRICS value of one results.json."""
    epochs = [e for e in results.get("epochs") or [] if isinstance(e, dict)]
    status = str(results.get("status", "unknown"))
    bad_epoch = _diverged_epoch(results, epochs, loss_upper_bound)
    if status == "completed" and any(_loss_bad(e, loss_upper_bound) for e in epochs):
        status = "diverged"
    acc = _finite(e.get("test_accuracy") for e in epochs)
    times = _finite(e.get("epoch_time_s") for e in epochs)
    updates = _finite(_number(e.get("batch_size")) / _number(e.get("samples_per_second")) * 1e3
                      for e in epochs if _number(e.get("samples_per_second")))
    # Seed 002 reports the loss on the whole training set (train.eval_train_set = True);
    # otherwise the running mean over the last epoch's updates.
    last_loss = (_number(epochs[-1].get("full_train_loss", epochs[-1].get("train_loss")))
                 if epochs else None)
    return {
        "status": status,
        "diverged_epoch": bad_epoch if status == "diverged" else None,
        "epochs": len(epochs),
        "final_test_accuracy": _number(epochs[-1].get("test_accuracy")) if epochs else None,
        "best_test_accuracy": max(acc) if acc else None,
        "median_last5_test_accuracy": (
            statistics.median(_finite(e.get("test_accuracy") for e in epochs[-5:]) or [math.nan])
            if epochs else None),
        "lowest_test_error": 1.0 - max(acc) if acc else None,
        "final_train_loss": last_loss,
        "epoch_time_s": statistics.median(times) if times else None,
        "update_time_ms": statistics.median(updates) if updates else None,
    }


def is_finished(run_dir: str) -> bool:
    results = read_results(run_dir)
    return results is not None and results.get("status") in FINAL_STATUSES


# ---- Summary -----------------------------------------------------------------------------------

def summary_rows(study: Study, sweep_dir: str, state: Mapping[str, dict]) -> list[dict]:
    rows = []
    for spec in study.runs:
        row = {"run": spec.name}
        if any(r.variant for r in study.runs):
            row["variant"] = spec.variant or ""
        row.update(spec.params)
        results = read_results(os.path.join(sweep_dir, spec.name))
        info = state.get(spec.name, {})
        if results is not None and results.get("status") in FINAL_STATUSES:
            row.update(run_metrics(results, loss_upper_bound=study.loss_upper_bound))
            row["error"] = ""
        else:
            row.update({"status": info.get("status", "pending"), "diverged_epoch": None,
                        "epochs": len((results or {}).get("epochs") or [])})
            row.update(dict.fromkeys(METRICS))
            row["error"] = info.get("error", "")
        rows.append(row)
    return rows


def _cell(value, metric: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if metric and math.isfinite(value) and abs(value) < 1e4:
            return f"{value:.4f}"
        return format(value, ".4g" if metric else "g")
    return str(value)


def write_summary(study: Study, sweep_dir: str, rows: list[dict], title: str) -> None:
    """<sweep_dir>/summary.csv (every column) and summary.md (headline metric first)."""
    from keras_largebatch.training.run_dir import write_text_atomic

    fields = list(rows[0])
    tmp = os.path.join(sweep_dir, ".summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, os.path.join(sweep_dir, "summary.csv"))

    metric = study.metric
    cols = [c for c in fields if c not in METRICS and c != "error"]
    cols += [metric] + [m for m in METRICS if m != metric] + ["error"]
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"]
                                                                            for r in rows)}
    lines = [f"# Sweep {title}", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"Metric: `{metric}`, {METRICS[metric][0]}. Runs: {len(rows)} ("
              + ", ".join(f"{n} {s}" for s, n in counts.items()) + ").", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c), c in METRICS).replace("|", "/") for c in cols)
              + " |" for r in rows]
    scored = [r for r in rows if r["status"] == "completed" and _number(r.get(metric)) is not None
              and math.isfinite(r[metric])]
    if scored:
        best = (max if METRICS[metric][1] else min)(scored, key=lambda r: r[metric])
        lines += ["", f"Best completed run by `{metric}`: {best['run']} "
                  f"({_cell(best[metric], True)})."]
    write_text_atomic(os.path.join(sweep_dir, "summary.md"), "\n".join(lines) + "\n")


# ---- Running ------------------------------------------------------------------------------------

class _Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


def _lock(sweep_dir: str) -> int:
    """An exclusive flock on <sweep_dir>/.sweep.lock, inherited by the runs it starts, so a
    second sweep is refused while this one or any run it started still lives."""
    fd = os.open(os.path.join(sweep_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(os.path.join(sweep_dir, LOCK_FILE)) as f:
            holder = f.read().strip() or "?"
        os.close(fd)
        raise UserInputError(f"{sweep_dir} is in use by another sweep or a run it started "
                             f"({holder}); wait for it or end it, then rerun") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"sweep pid {os.getpid()}".encode())
    return fd


def _error_line(log_path: str) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    tail = [line for line in lines if line.strip()]
    return (errors or tail or [""])[-1][:300]


def run_sweep(study: Study, *, sweep_dir: str, parallel: int = 1, title: str = "",
              python: str = sys.executable, poll_s: float = 0.5, echo=None) -> list[dict]:
    """Run every unfinished run of `study` (at most `parallel` at once); returns summary rows.

    SIGTERM / SIGINT end the running runs with SIGTERM (they resume next time) and re-raise
    KeyboardInterrupt after the summary is written.
    """
    from keras_largebatch.training.run_dir import read_json, write_json_atomic

    echo = echo or functools.partial(print, flush=True)
    if not isinstance(parallel, int) or parallel < 1:
        raise UserInputError(f"--parallel must be an integer >= 1; got {parallel!r}")
    if parallel > (os.cpu_count() or 1):
        echo(f"warning: --parallel={parallel} exceeds the {os.cpu_count()} CPU cores; runs will "
             "be slower each, and timing metrics are not comparable")
    os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
    lock_fd = _lock(sweep_dir)
    title = title or os.path.basename(os.path.abspath(sweep_dir))
    manifest_path = os.path.join(sweep_dir, SWEEP_FILE)
    state: dict[str, dict] = (read_json(manifest_path, {}) or {}).get("runs", {})

    def save() -> list[dict]:
        write_json_atomic(manifest_path, {
            "title": title, "metric": study.metric, "description": study.description,
            "grid_keys": list(study.grid_keys), "base_lr_key": study.base_lr_key,
            "loss_upper_bound": study.loss_upper_bound,
            "order": [spec.name for spec in study.runs], "runs": state})
        rows = summary_rows(study, sweep_dir, state)
        write_summary(study, sweep_dir, rows, title)
        return rows

    queue = []
    for spec in study.runs:
        run_dir = os.path.join(sweep_dir, spec.name)
        command = spec.command(run_dir, python)
        old = state.get(spec.name, {})
        if is_finished(run_dir):
            if old.get("command") and old["command"] != command:
                echo(f"warning: {spec.name} finished with a different command; delete "
                     f"{run_dir} to run it with the current study")
            echo(f"skip {spec.name}: {read_results(run_dir).get('status')}")
            continue
        state[spec.name] = {**old, "command": command, "status": "pending"}
        queue.append((spec, run_dir, command))
    save()

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    if parallel > 1:  # share the cores instead of oversubscribing them
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
        env.setdefault("TF_NUM_INTEROP_THREADS", threads)
    active: dict[str, tuple[subprocess.Popen, float, str]] = {}
    total, done = len(queue), 0
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while queue or active:
            while queue and len(active) < parallel:
                spec, run_dir, command = queue.pop(0)
                log_path = os.path.join(sweep_dir, "logs", f"{spec.name}.log")
                with open(log_path, "a") as log:
                    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                              f"{' '.join(command)}\n")
                    log.flush()
                    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, pass_fds=(lock_fd,))
                active[spec.name] = (proc, time.perf_counter(), log_path)
                state[spec.name]["status"] = "running"
                echo(f"start {spec.name}" + (" (resuming)" if os.path.isdir(os.path.join(
                    run_dir, "checkpoints")) else ""))
            time.sleep(poll_s)
            for name in [n for n, (p, _, _) in active.items() if p.poll() is not None]:
                proc, start, log_path = active.pop(name)
                done += 1
                run_dir = os.path.join(sweep_dir, name)
                results = read_results(run_dir)
                info = state[name]
                info["returncode"] = proc.returncode
                if results is not None and results.get("status") in FINAL_STATUSES:
                    m = run_metrics(results, loss_upper_bound=study.loss_upper_bound)
                    info.update(status=m["status"], error="")
                    extra = (f" at epoch {m['diverged_epoch']}" if m["status"] == "diverged"
                             else f", {study.metric} = {_cell(m[study.metric], True)}")
                else:
                    info.update(status="failed", error=_error_line(log_path) or
                                f"exit status {proc.returncode} and no results.json")
                    extra = f": {info['error']}"
                echo(f"[{done}/{total}] {name}: {info['status']}{extra} "
                     f"({time.perf_counter() - start:.0f} s)")
                save()
    except (_Interrupted, KeyboardInterrupt) as e:
        echo(f"interrupted ({e or 'SIGINT'}): stopping {len(active)} run(s); rerun the same "
             "command to resume")
        for proc, _, _ in active.values():
            proc.terminate()
        for name, (proc, _, _) in active.items():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            state[name]["status"] = "interrupted"
        save()
        raise KeyboardInterrupt from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(lock_fd)
    return save()


# ---- Command line -------------------------------------------------------------------------------

def _define_flags():
    from absl import flags

    flags.DEFINE_multi_string("gin_file", [], "Study gin file(s): sweep.* bindings.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra sweep.* bindings.")
    flags.DEFINE_string("sweep_dir", None, "Output folder (default runs/<study file name>).")
    flags.DEFINE_integer("parallel", 1, "Runs at once.")
    flags.DEFINE_bool("dry_run", False, "Print each run's command and exit.")
    flags.DEFINE_bool("plot", True, "Regenerate the plots (keras_largebatch.plot) at the end.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
    if not FLAGS.gin_file:
        _fail("no study given; pass --gin_file=gin/studies/<study>.gin")
    name = os.path.splitext(os.path.basename(FLAGS.gin_file[-1]))[0]
    sweep_dir = FLAGS.sweep_dir or os.path.join("runs", name)
    try:
        study = load_study(FLAGS.gin_file, FLAGS.gin_bindings)
        if FLAGS.dry_run:
            for spec in study.runs:
                print(" ".join(repr(a) if " " in a else a
                               for a in spec.command(os.path.join(sweep_dir, spec.name))))
            return
        rows = run_sweep(study, sweep_dir=sweep_dir, parallel=FLAGS.parallel, title=name)
    except UserInputError as e:
        _fail(e.line)
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"summary: {os.path.join(sweep_dir, 'summary.md')}")
    if FLAGS.plot:
        from keras_largebatch import plot

        try:
            for path in plot.plot_dir(sweep_dir):
                print(f"plot: {path}")
        except Exception as e:  # the runs and summary stand; plots can be regenerated alone
            print(f"warning: plotting failed ({type(e).__name__}: {e}); rerun "
                  f"python -m keras_largebatch.plot {sweep_dir}", file=sys.stderr)
    failed = [r["run"] for r in rows if r["status"] not in FINAL_STATUSES]
    if failed:
        print(f"error: {len(failed)} run(s) did not finish: {', '.join(failed)}; see "
              f"{os.path.join(sweep_dir, 'logs')} and rerun the same command", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
