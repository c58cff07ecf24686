"""Run a study: a grid of gin bindings, one real `keras_largebatch.main` process per run.

    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin \\
        [--sweep_dir=runs/<study>] [--parallel=2] [--dry_run] [--noplot]
        [--executor=ray [--ray_address=auto|host:port] [--num_cpus=1] [--num_gpus=0]]

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
    sweep.seeds = [0, 1, 2]                              # every run once per train.seed (optional)

To choose learning rates without the test set, hold a validation split out of the training
set in every run (`'train.validation_examples = 5000'` in base_bindings) and set
`sweep.metric = 'best_validation_accuracy'`: the best grid point is then the one with the best
mean validation accuracy, and summary.md shows next to it `test_accuracy_at_best_validation`,
the test accuracy at each run's epoch of best validation accuracy (what a study reports).

Runs are `<variant>__<key>=<value>__...` folders of `--sweep_dir` (`...__seed=<n>` with
`sweep.seeds`: the summary and plots then give mean +- std over seeds, studies/seeds.py);
each gets `base bindings + variant bindings + grid bindings (+ train.seed)` (later wins).
Grid values are Python literals written with repr(); a string starting with '@' or '%' is
written verbatim (a gin reference or macro). Rerunning the same command resumes: runs whose
results.json has a final status (completed, diverged) are skipped, the others are launched
again with the same command and resume from their checkpoints. A diverged run is recorded
with its epoch and the sweep goes on; a run that exits non-zero without results.json is
recorded as failed (its log is in logs/<run>.log). After every run, <sweep_dir>/summary.csv
and summary.md are rewritten (one row per run: grid values, status, diverged_epoch and every
METRICS value; with seeds one row per grid point, studies/summary.py); at the end the plots
(keras_largebatch.studies.plot) are regenerated. <sweep_dir>/sweep.json keeps each run's command and
last outcome; logs/<run>.log its output.

Every run gets TCMalloc preloaded when it is installed (allocator.py: same numbers, faster on
CPU; KERAS_LARGEBATCH_MALLOC=system opts out). `--parallel N` starts N runs at once and gives
each cores/N TensorFlow threads. A lock on
<sweep_dir>/.sweep.lock, inherited by the runs, refuses a second sweep on the same folder while
this one or any run it started is alive. SIGTERM / Ctrl-C stop the running runs with SIGTERM
(they checkpoint and resume next time). `--dry_run` prints each run's command.

`--executor=ray` makes each run a Ray task on a cluster instead (studies/executors.py: the same
CLI process, started on the node Ray picks; the sweep folder must be on a file system every
node sees at the same path); the lock then guards the driver only. Every finished run also gets
TensorBoard HParams summaries (studies/hparams.py), so `tensorboard --logdir <sweep_dir>` lists
the study in its HPARAMS tab.
"""

from __future__ import annotations

import fcntl
import functools
import os
import signal
import sys
import time

from keras_largebatch import files, validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import hparams
from keras_largebatch.studies import results as rs
from keras_largebatch.studies.executors import (
    EXECUTORS,
    Job,
    LocalExecutor,
    Outcome,
    RayExecutor,
    RayOptions,
)
from keras_largebatch.studies.grid import LOCK_FILE, LOGS_DIR, RunSpec, Study, load_study
from keras_largebatch.studies.manifest import SWEEP_FILE, read_manifest
from keras_largebatch.studies.metrics import run_metrics
from keras_largebatch.studies.results import FINAL_STATUSES, is_finished, read_results
from keras_largebatch.studies.summary import cell, summary_rows, write_summary

# ---- Running ------------------------------------------------------------------------------------

class _Interrupted(Exception):
    pass


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
    """The last `error:` line of a run's log (else its last line): why the run failed."""
    try:
        with open(log_path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    tail = [line for line in lines if line.strip()]
    return (errors or tail or [""])[-1][:300]


def run_sweep(study: Study, *, sweep_dir: str, parallel: int = 1, title: str = "",
              python: str = sys.executable, poll_s: float = 0.5, echo=None,
              allow_imports: bool = False, ray: RayOptions | None = None) -> list[dict]:
    """Run every unfinished run of `study`; returns summary rows.

    Locally at most `parallel` at once; with `ray` (executors.RayOptions) every run is a Ray
    task on that cluster. `allow_imports` passes --gin_allow_imports to every run
    (keras_largebatch/gin_policy.py).

    SIGTERM / SIGINT end the running runs with SIGTERM (they resume next time) and re-raise
    KeyboardInterrupt after the summary is written.
    """
    echo = echo or functools.partial(print, flush=True)
    parallel = validate.whole("--parallel", parallel, minimum=1,
                              fix="pass the number of runs to train at once")
    if ray is not None:
        if parallel != 1:
            raise UserInputError(f"--parallel={parallel} is for --executor=local; under Ray the "
                                 "cluster's CPUs / GPUs and --num_cpus / --num_gpus per run set "
                                 "how many runs train at once")
        executor = RayExecutor(ray.checked())  # before anything is written: a bad address
    elif parallel > (os.cpu_count() or 1):
        echo(f"warning: --parallel={parallel} exceeds the {os.cpu_count()} CPU cores; runs will "
             "be slower each, and timing metrics are not comparable")
    try:
        os.makedirs(os.path.join(sweep_dir, LOGS_DIR), exist_ok=True)
        lock_fd = _lock(sweep_dir)
        try:
            if ray is None:
                executor = LocalExecutor(parallel, lock_fd)
            return _run_locked(study, sweep_dir=sweep_dir, executor=executor, title=title,
                               python=python, poll_s=poll_s, echo=echo,
                               allow_imports=allow_imports)
        finally:
            os.close(lock_fd)
    finally:
        if ray is not None:
            executor.close()


def _record(study: Study, spec: RunSpec, sweep_dir: str, info: dict,
            outcome: Outcome) -> str:
    """Fill the manifest entry `info` of a finished run (and its HParams); the echo's tail."""
    run_dir = os.path.join(sweep_dir, spec.name)
    info["returncode"] = outcome.returncode
    try:
        results, damage = read_results(run_dir), ""
    except UserInputError as e:  # cannot come from the loop's atomic writer
        results, damage = None, e.line
    if results is not None and results.get(rs.STATUS) in FINAL_STATUSES:
        m = run_metrics(results, loss_upper_bound=study.loss_upper_bound)
        info.update(status=m["status"], error="")
        hparams.write_run(study, spec, run_dir, results, m)
        return (f" at epoch {m['diverged_epoch']}" if m["status"] == "diverged"
                else f", {study.metric} = {cell(m[study.metric], True)}")
    log_path = os.path.join(sweep_dir, LOGS_DIR, f"{spec.name}.log")
    info.update(status="failed", error=damage or outcome.error or _error_line(log_path) or
                f"exit status {outcome.returncode} and no {rs.RESULTS_FILE}")
    return f": {info['error']}"


def _run_locked(study: Study, *, sweep_dir: str, executor, title: str, python: str,
                poll_s: float, echo, allow_imports: bool) -> list[dict]:
    """`run_sweep` once <sweep_dir>/.sweep.lock is held, on `executor` (executors.py)."""
    title = title or os.path.basename(os.path.abspath(sweep_dir))
    manifest_path = os.path.join(sweep_dir, SWEEP_FILE)
    state: dict[str, dict] = read_manifest(sweep_dir).get("runs") or {}
    specs = {spec.name: spec for spec in study.runs}

    def save() -> list[dict]:
        files.write_json_atomic(manifest_path, {
            "title": title, "metric": study.metric, "description": study.description,
            "grid_keys": list(study.grid_keys), "base_lr_key": study.base_lr_key,
            "loss_upper_bound": study.loss_upper_bound,
            **({"seeds": list(study.seeds)} if study.seeds else {}),
            "order": [spec.name for spec in study.runs], "runs": state})
        rows = summary_rows(study, sweep_dir, state)
        write_summary(study, sweep_dir, rows, title)
        return rows

    hparams.write_experiment(study, sweep_dir)
    queue = []
    for spec in study.runs:
        run_dir = os.path.join(sweep_dir, spec.name)
        command = spec.command(run_dir, python, allow_imports=allow_imports)
        old = state.get(spec.name, {})
        if is_finished(run_dir):
            if old.get("command") and old["command"] != command:
                echo(f"warning: {spec.name} finished with a different command; delete "
                     f"{run_dir} to run it with the current study")
            results = read_results(run_dir)
            if not os.path.isdir(os.path.join(run_dir, hparams.HPARAMS_DIR)):
                hparams.write_run(study, spec, run_dir, results, run_metrics(
                    results, loss_upper_bound=study.loss_upper_bound))
            echo(f"skip {spec.name}: {results.get('status')}")
            continue
        state[spec.name] = {**old, "command": command, "status": "pending"}
        queue.append(Job(spec.name, tuple(command),
                         os.path.join(sweep_dir, LOGS_DIR, f"{spec.name}.log"), os.getcwd()))
    save()

    started: dict[str, float] = {}
    total, done = len(queue), 0
    # The handler only records the signal: raising from it inside ray.wait's C code ends in a
    # SystemError (seen with Ray 2.60); the loop notices within one poll_s.
    signals: list[str] = []
    previous = {s: signal.signal(s, lambda signum, _: signals.append(
        signal.Signals(signum).name)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (queue or started) and not signals:
            while queue and len(started) < executor.capacity:
                job = queue.pop(0)
                executor.submit(job)
                started[job.name] = time.perf_counter()
                state[job.name]["status"] = "running" if executor.name == "local" else "queued"
                verb = "start" if executor.name == "local" else "submit"
                echo(f"{verb} {job.name}" + (" (resuming)" if os.path.isdir(os.path.join(
                    sweep_dir, job.name, "checkpoints")) else ""))
            for outcome in executor.wait(poll_s):
                done += 1
                name = outcome.name
                extra = _record(study, specs[name], sweep_dir, state[name], outcome)
                echo(f"[{done}/{total}] {name}: {state[name]['status']}{extra} "
                     f"({time.perf_counter() - started.pop(name):.0f} s)")
                save()
        if signals:
            raise _Interrupted(signals[0])
    except (_Interrupted, KeyboardInterrupt) as e:
        echo(f"interrupted ({e or 'SIGINT'}): stopping {len(started)} run(s); rerun the same "
             "command to resume")
        for name in executor.stop():
            state[name]["status"] = "interrupted"
        save()
        raise KeyboardInterrupt from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return save()


# ---- Command line -------------------------------------------------------------------------------

def _define_flags(flag_values=None):
    """Define the sweep's flags on `flag_values` (default absl's global FLAGS)."""
    from absl import flags

    fv = {"flag_values": flag_values} if flag_values is not None else {}
    flags.DEFINE_multi_string("gin_file", [], "Study gin file(s): sweep.* bindings.", **fv)
    flags.DEFINE_multi_string("gin_bindings", [], "Extra sweep.* bindings.", **fv)
    flags.DEFINE_string("sweep_dir", None, "Output folder (default runs/<study file name>).", **fv)
    flags.DEFINE_integer("parallel", 1, "Runs at once (--executor=local).", **fv)
    flags.DEFINE_enum("executor", "local", list(EXECUTORS), "Where the runs train: local "
                      "subprocesses, or Ray tasks on a cluster (pip install -e '.[ray]').", **fv)
    flags.DEFINE_string("ray_address", None, "--executor=ray: the cluster, 'auto' or host:port "
                        "(default: RAY_ADDRESS, else a local cluster, else a new local Ray).", **fv)
    flags.DEFINE_float("num_cpus", 1, "--executor=ray: CPUs one run reserves (and its TF "
                       "threads).", **fv)
    flags.DEFINE_float("num_gpus", 0, "--executor=ray: GPUs one run reserves.", **fv)
    flags.DEFINE_integer("max_retries", 3, "--executor=ray: how often Ray reruns a run whose "
                         "node or worker died (it resumes from its checkpoint).", **fv)
    flags.DEFINE_bool("dry_run", False, "Print each run's command and exit.", **fv)
    flags.DEFINE_bool("gin_allow_imports", False, "Let the study file and every run's gin "
                      "config import Python modules (they are then code that runs as you).", **fv)
    flags.DEFINE_bool("plot", True, "Regenerate the plots (keras_largebatch.studies.plot) at the "
                      "end.", **fv)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


RAY_FLAGS = ("ray_address", "num_cpus", "num_gpus", "max_retries")


def _ray_options(FLAGS) -> RayOptions | None:
    """--executor=ray's options; None for the local executor (which refuses the Ray flags)."""
    if FLAGS.executor != "ray":
        given = [f"--{f}" for f in RAY_FLAGS if FLAGS[f].present]
        if given:
            raise UserInputError(f"{given[0]} is for --executor=ray; add --executor=ray or "
                                 f"drop {given[0]}")
        return None
    return RayOptions(address=FLAGS.ray_address, num_cpus=FLAGS.num_cpus,
                      num_gpus=FLAGS.num_gpus, max_retries=FLAGS.max_retries)


def main(argv: list[str], FLAGS=None) -> None:
    """The command; `FLAGS`: parsed flag values (default absl's global FLAGS)."""
    from absl import flags

    FLAGS = FLAGS if FLAGS is not None else flags.FLAGS
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
    if not FLAGS.gin_file:
        _fail("no study given; pass --gin_file=gin/studies/<study>.gin")
    name = os.path.splitext(os.path.basename(FLAGS.gin_file[-1]))[0]
    sweep_dir = FLAGS.sweep_dir or os.path.join("runs", name)
    try:
        allow = FLAGS.gin_allow_imports
        study = load_study(FLAGS.gin_file, FLAGS.gin_bindings, allow_imports=allow)
        if FLAGS.dry_run:
            for spec in study.runs:
                print(" ".join(repr(a) if " " in a else a
                               for a in spec.command(os.path.join(sweep_dir, spec.name),
                                                     allow_imports=allow)))
            return
        rows = run_sweep(study, sweep_dir=sweep_dir, parallel=FLAGS.parallel, title=name,
                         allow_imports=allow, ray=_ray_options(FLAGS))
    except UserInputError as e:
        _fail(e.line)
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"summary: {os.path.join(sweep_dir, 'summary.md')}")
    if FLAGS.plot:
        from keras_largebatch.studies import plot

        try:
            for path in plot.plot_dir(sweep_dir):
                print(f"plot: {path}")
        except Exception as e:  # the runs and summary stand; plots can be regenerated alone
            print(f"warning: plotting failed ({type(e).__name__}: {e}); rerun "
                  f"python -m keras_largebatch.studies.plot {sweep_dir}", file=sys.stderr)
    failed = [r["run"] for r in rows if r["status"] not in FINAL_STATUSES]
    if failed:
        print(f"error: {len(failed)} run(s) did not finish: {', '.join(failed)}; see "
              f"{os.path.join(sweep_dir, LOGS_DIR)} and rerun the same command", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    from absl import app

    _define_flags()
    from keras_largebatch import cli_flags

    app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
    run()
