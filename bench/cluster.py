"""Emulated cluster benchmark: real CLI workers in network namespaces over tbf-capped veth links.

Run as root from the repository root (iproute2 and taskset needed; ~40 min at the defaults):

    .venv/bin/python bench/cluster.py
    .venv/bin/python bench/cluster.py --rates=100mbit --experiment_rates=100mbit --epochs=4
    .venv/bin/python bench/cluster.py --experiment=lars --parts=experiment
    .venv/bin/python bench/cluster.py --predict_workers=8 --predict_rate=10gbit \
        --predict_params=25600000 --keep_logs=runs/cluster_bench
    .venv/bin/python bench/cluster.py --smoke     # tiny CNN, 2 epochs of 1024 images, 100mbit
    .venv/bin/python bench/cluster.py --cleanup   # delete namespaces of benches killed -9

Each worker is one `python -m keras_largebatch.main` process in its own network namespace
(`klb-<pid>-w<i>`, bench/netns.py), pinned to core i with taskset, with TF_CONFIG naming the
workers' addresses on the veth link (10.253.0.<i+1>:12345); every link end is capped with
`tc ... tbf rate R` (R from --rates, validated first: a bad rate is one `error:` line naming it,
exit 2, before any namespace exists). The single-worker baseline is one such process pinned to
core 0 with no TF_CONFIG at the same global batch. Only the namespaces and links need root: the
workers run as --worker_user (`setpriv` in the namespace: no capabilities left), with HOME and
their run folders in the bench's work folder, owned by that user. The default, auto, is nobody
where nobody can execute the python, read the repository and write in the work folder, and root
otherwise, with the reason printed (e.g. a python under /root, a 0700 folder: then nobody
cannot run it, and making the workers' python reachable is the fix).
Namespaces and links are removed at exit, also on Ctrl-C/SIGTERM and when a worker fails;
workers are killed by PID. A bench killed with SIGKILL cannot clean up: `--cleanup` deletes the
`klb-<pid>-*` namespaces whose PID is gone (never those of a live PID: a running bench's) and
prints what it removed and what it kept.

Printed, in one run:
 1. scaling (--parts scaling): samples/s of 1 worker and of --workers workers at global batch
    --scaling_batch for each link rate in --rates, and the speed-up. Samples/s are results.json
    `samples_per_second` of epochs 2.. (epoch 1 holds tracing and pipeline start-up); a
    1-worker run at the per-worker batch (--scaling_batch / --workers) gives the cost model
    the compute time alone.
 2. the experiment (--parts experiment) at every rate in --experiment_rates:
    adabatch (seed 000): ResNet-20 on --examples Fashion-MNIST images, fixed 128, fixed 1024
      and AdaBatch 128 -> 1024 (x2 every --epochs/4 epochs, LR x0.75; fixed runs LR x0.375),
      and GoodputBatch 128..1024 (fixed 128's LR schedule with AdaScale's gain; the batch
      chosen at each epoch end from the measured noise scale and step times);
    lars (seed 004): LARS at fixed 4096 vs momentum SGD at 128 (lars_fashion_mnist.gin's
      schedule, 1 warm-up epoch).
    Time = sum of the runs' `epoch_time_s` (training steps only: no evaluation, no start-up),
    with epoch 1 of each run replaced by the median epoch time of later epochs at the same
    batch and rate (any run of the experiment); marked * where no such epoch exists. Also
    printed: results.json `wall_time_s` (all epochs, with evaluation), `final_test_accuracy`,
    the speed-up over the baseline (fixed 128 / sgd 128), and the time to reach the baseline's
    final test accuracy minus 0.5 points (the same epoch times, summed up to the first epoch
    whose test accuracy reaches it; "-" if none does).
 3. a cost model (bench/cost_model.py) fitted to every steady epoch measured above, its
    prediction next to each measured row, and its prediction for the cluster named by
    --predict_workers, --predict_rate, --predict_params (default: the measured one).
The last line: `<experiment> speed-up over <baseline>: <x>x at <rate> (accuracy <a> vs <b>)`
at the slowest experiment rate. Numbers depend on the machine's load: the load average is
printed at start and end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402
from cluster_report import Measured, fill_times, report  # noqa: E402
from timing import bench_parser, load_average, machine_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PORT = 12345            # each worker's own namespace: no other process can hold it
ADABATCH_GIN = "gin/experiments/adabatch_fashion_mnist.gin"
LARS_GIN = "gin/experiments/lars_fashion_mnist.gin"


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


@dataclass
class RunSpec:
    label: str
    gin_file: str
    bindings: list[str]


@dataclass
class Experiment:
    name: str
    runs: list[RunSpec]
    baseline: str           # label of the run the others are compared with
    headline: str           # label of the run of the last line


def fixed_bindings(batch: int, every: int) -> list[str]:
    return ["train.batch_schedule = None", f"train.batch_size = {batch}",
            "train.learning_rate = @StepDecay()", "StepDecay.initial = 0.05",
            "StepDecay.factor = 0.375", f"StepDecay.every_epochs = {every}"]


def experiment(name: str, epochs: int) -> Experiment:
    if name == "adabatch":
        k = max(1, epochs // 4)
        return Experiment(name, [
            RunSpec("fixed 128", ADABATCH_GIN, fixed_bindings(128, k)),
            RunSpec("fixed 1024", ADABATCH_GIN, fixed_bindings(1024, k)),
            RunSpec("adabatch 128->1024", ADABATCH_GIN,
                    [f"AdaBatch.interval_epochs = {k}", "AdaBatch.max_batch_size = 1024"]),
            # Nothing set by hand but the bounds: fixed 128's LR schedule, AdaScale's gain on
            # whatever batch goodput picks (goodput/batch.py).
            RunSpec("goodput 128..1024", ADABATCH_GIN,
                    ["train.batch_schedule = @GoodputBatch()", "GoodputBatch.min_batch_size = 128",
                     "GoodputBatch.max_batch_size = 1024", "train.lr_scaling = 'adascale'",
                     *fixed_bindings(128, k)[2:]]),
        ], baseline="fixed 128", headline="adabatch 128->1024")
    common = [f"PolynomialDecay.total_epochs = {epochs}", "LinearWarmup.warmup_epochs = 1"]
    return Experiment(name, [
        RunSpec("sgd 128", LARS_GIN, [*common, "train.optimizer = 'momentum'",
                                      "train.batch_size = 128", "PolynomialDecay.initial = 0.05"]),
        RunSpec("lars 4096", LARS_GIN, [*common, "train.batch_size = 4096",
                                        "PolynomialDecay.initial = 10.0"]),
    ], baseline="sgd 128", headline="lars 4096")


def only_arms(exp: Experiment, arms: list[str]) -> Experiment:
    """The experiment's runs named in `arms`, in its order; the baseline and the headline
    fall back to the first run kept when not among them."""
    runs = [r for r in exp.runs if r.label in arms]
    first = runs[0].label
    keep = {r.label for r in runs}
    return Experiment(exp.name, runs, exp.baseline if exp.baseline in keep else first,
                      exp.headline if exp.headline in keep else first)


class Bench:
    def __init__(self, args, cluster: netns.EmulatedCluster, workdir: Path):
        self.args, self.cluster, self.workdir = args, cluster, workdir
        self.count = 0
        self.home = workdir  # the workers' HOME (Keras' config, caches): see choose_user

    def owned(self, path: Path) -> Path:
        """Create `path` for the workers: owned by their user, so they can write in it."""
        path.mkdir(parents=True, exist_ok=True)
        if self.cluster.identity:
            os.chown(path, *self.cluster.identity)
        return path

    def common(self, epochs: int) -> list[str]:
        a = self.args
        return [f"train.model = '{a.model}'", f"train.epochs = {epochs}",
                f"fashion_mnist.max_train_examples = {a.examples}",
                f"fashion_mnist.max_test_examples = {a.test_examples}"]

    def argv(self, spec: RunSpec, epochs: int, run_dir: Path, extra=()) -> list[str]:
        bindings = [*self.common(epochs), *spec.bindings, *self.args.gin_bindings]
        return [self.args.python, "-m", "keras_largebatch.main", f"--gin_file={spec.gin_file}",
                *[f"--gin_bindings={b}" for b in bindings], f"--run_dir={run_dir}", *extra]

    def env(self, workers: int, index: int) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", HOME=str(self.home))
        if workers > 1:
            hosts = [f"{a}:{PORT}" for a in self.cluster.addresses[:workers]]
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts},
                                           "task": {"type": "worker", "index": index}})
        return env

    def folder(self, what: str) -> Path:
        self.count += 1
        path = self.workdir / f"{self.count:02d}-{re.sub(r'[^A-Za-z0-9.]+', '_', what)}"
        if path.exists():
            raise netns.ClusterError(f"{path} exists already; give --keep_logs an empty folder")
        return self.owned(path)

    def choose_user(self) -> str:
        """Who the workers run as: --worker_user if it can run the python, read the repository
        and write in the work folder; with `auto` (the default), nobody if it can, else root,
        saying why. An explicit user that cannot: ClusterError (one line, with the fix)."""
        wanted = self.args.worker_user
        if wanted != "root":
            name = "nobody" if wanted == "auto" else wanted
            identity = netns.worker_identity(name)
            probe = self.workdir / "access_probe"
            probe.mkdir(exist_ok=True)  # (left by a bench killed mid-probe: reused)
            os.chown(probe, *identity)
            try:
                problem = netns.access_problem(
                    identity, run=self.args.python, write=str(probe),
                    read=str(REPO / "keras_largebatch" / "main.py"))
            finally:
                probe.rmdir()
            if problem is None:
                self.cluster.identity = identity
                wanted = name
            elif wanted == "auto":
                print(f"workers run as root: user {name} {problem}", flush=True)
                wanted = "root"
            else:
                raise netns.ClusterError(
                    f"the workers' user {name} {problem}: give --keep_logs and --python "
                    f"paths that user can reach, or --worker_user=root")
        self.home = self.owned(self.workdir / "home")
        return wanted

    def parameters(self, spec: RunSpec) -> int:
        """The model's parameter count, from a --dry_run of the CLI in worker 0's namespace."""
        folder = self.folder("dry_run")
        log = folder / "worker0.log"
        self.cluster.run([self.argv(spec, 1, folder / "run", ["--dry_run"])],
                         envs=[self.env(1, 0)], cwd=REPO, logs=[log], timeout=self.args.timeout)
        m = re.search(r"'parameters': (\d+)", log.read_text())
        if not m:
            raise netns.ClusterError(f"no parameter count in the dry run's output ({log})")
        return int(m.group(1))

    def train(self, spec: RunSpec, workers: int, rate: str | None, epochs: int) -> Measured:
        where = f"{rate or 'no link'}, {workers} worker{'s' if workers > 1 else ''}"
        folder = self.folder(f"{spec.label}-{workers}w-{rate or 'local'}")
        run_dir = folder / "run"
        logs = [folder / f"worker{i}.log" for i in range(workers)]
        self.cluster.run([self.argv(spec, epochs, run_dir)] * workers,
                         envs=[self.env(workers, i) for i in range(workers)], cwd=REPO,
                         logs=logs, timeout=self.args.timeout,
                         on_start=lambda pids: print(
                             f"  running {spec.label} ({where}): pids "
                             f"{' '.join(map(str, pids))} ...", flush=True))
        results = json.loads((run_dir / "results.json").read_text())
        print(f"    done: wall_time_s {results['wall_time_s']:.1f}", flush=True)
        return Measured(spec.label, workers, rate, results,
                        batches=[e["batch_size"] for e in results["epochs"]])


# ---- main ----------------------------------------------------------------------------------------

SMOKE = {"model": "cnn_fashion", "gin_bindings": ["cnn_fashion.filters = (8, 16)"],
         "test_examples": 200, "epochs": 2, "parts": "experiment", "experiment_rates": "100mbit",
         "examples": 1024}


def parse_args(argv):
    p = bench_parser(__doc__)
    p.add_argument("--cleanup", action="store_true",
                   help="only delete the namespaces of benches that are gone (killed -9)")
    p.add_argument("--worker_user", default="auto",
                   help="user the workers run as; auto: nobody where it can run the python and "
                        "reach the folders, else root (the reason printed); root: no change")
    p.add_argument("--experiment", choices=("adabatch", "lars"), default="adabatch")
    p.add_argument("--parts", default="scaling,experiment",
                   help="comma list of: scaling, experiment")
    p.add_argument("--arms", default="",
                   help="comma list of the experiment's run labels to run (default: all); "
                        "without the baseline, comparisons are against the first one run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rates", default="10gbit,1gbit,100mbit", help="link rates of the scaling")
    p.add_argument("--experiment_rates", default="1gbit,100mbit")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each experiment run")
    p.add_argument("--scaling_epochs", type=int, default=2)
    p.add_argument("--scaling_batch", type=int, default=1024, help="global batch (scaling)")
    p.add_argument("--examples", type=int, default=None,
                   help="training examples per epoch (default 6400; lars: 16384)")
    p.add_argument("--test_examples", type=int, default=10000)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--gin_bindings", action="append", default=[],
                   help="extra binding for every run (after the bench's own)")
    p.add_argument("--predict_workers", type=int, default=0, help="default: --workers")
    p.add_argument("--predict_rate", default=None, help="default: the slowest measured rate")
    p.add_argument("--predict_params", type=int, default=0, help="default: the measured model")
    p.add_argument("--keep_logs", default=None, help="folder for the workers' logs and run dirs")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per training run")
    p.add_argument("--python", default=sys.executable, help="python of the workers")
    args = p.parse_args(argv)
    if args.smoke:  # the smallest run: 4 two-worker runs of a tiny CNN (the slow test's)
        for name, value in SMOKE.items():
            setattr(args, name, [*value, *args.gin_bindings] if name == "gin_bindings" else value)
    args.parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not args.parts or not args.parts <= {"scaling", "experiment"}:
        p.error("--parts: a comma list of scaling, experiment")
    args.arms = [x.strip() for x in args.arms.split(",") if x.strip()]
    labels = [r.label for r in experiment(args.experiment, args.epochs).runs]
    unknown = [x for x in args.arms if x not in labels]
    if unknown:
        p.error(f"--arms: {unknown[0]!r} is not a run of --experiment={args.experiment}; give "
                f"a comma list of: {', '.join(labels)}")
    if args.workers < 2:
        p.error("--workers must be >= 2")
    if args.examples is None:
        args.examples = 16384 if args.experiment == "lars" else 6400
    try:
        args.rates = [r.strip() for r in args.rates.split(",") if r.strip()]
        args.experiment_rates = [r.strip() for r in args.experiment_rates.split(",")
                                 if r.strip()]
        for flag, rates in (("--rates", args.rates),
                            ("--experiment_rates", args.experiment_rates),
                            ("--predict_rate", [args.predict_rate] if args.predict_rate else [])):
            if not rates and flag != "--predict_rate":
                raise ValueError(f"no rate in {flag}: give e.g. {flag}=100mbit,1gbit")
            for r in rates:
                try:
                    netns.parse_rate(r)
                except ValueError as e:
                    raise ValueError(f"{flag}: {e}") from None
    except ValueError as e:
        p.error(str(e))
    if args.predict_rate is None:
        measured = (args.experiment_rates if "experiment" in args.parts else args.rates)
        args.predict_rate = min(measured, key=lambda r: netns.parse_rate(r) or float("inf"))
    args.python = os.path.abspath(args.python)
    return args


def run(args) -> int:
    workdir = Path(args.keep_logs).resolve() if args.keep_logs else Path(
        tempfile.mkdtemp(prefix="klb-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.keep_logs:
        workdir.chmod(0o755)  # mkdtemp's 0700 would keep the workers' user out of their folders
    print(f"emulated cluster: {args.workers} workers, one network namespace and one core "
          f"each\n{machine_line()}", flush=True)
    try:
        with netns.EmulatedCluster(args.workers) as cluster:
            print(f"namespaces {', '.join(cluster.namespaces)}; logs in {workdir}", flush=True)
            bench = Bench(args, cluster, workdir)
            print(f"workers run as {bench.choose_user()}", flush=True)
            exp = experiment(args.experiment, args.epochs) if "experiment" in args.parts \
                else None
            if exp is not None and args.arms:
                exp = only_arms(exp, args.arms)
            scale_spec = RunSpec(f"fixed {args.scaling_batch}", ADABATCH_GIN,
                                 fixed_bindings(args.scaling_batch, 1))
            params = bench.parameters(scale_spec)
            print(f"model {args.model}: {params:,} parameters", flush=True)
            scaling, single, exp_runs = {}, None, {}
            if "scaling" in args.parts:
                per_worker = RunSpec(f"fixed {args.scaling_batch // args.workers}",
                                     ADABATCH_GIN,
                                     fixed_bindings(args.scaling_batch // args.workers, 1))
                single = bench.train(scale_spec, 1, None, args.scaling_epochs)
                scaling["extra"] = [bench.train(per_worker, 1, None, args.scaling_epochs)]
                scaling["multi"] = {}
                for rate in args.rates:
                    cluster.set_rate(rate)
                    scaling["multi"][rate] = bench.train(scale_spec, args.workers, rate,
                                                         args.scaling_epochs)
            if exp is not None:
                for rate in args.experiment_rates:
                    cluster.set_rate(rate)
                    exp_runs[rate] = [bench.train(spec, args.workers, rate, args.epochs)
                                      for spec in exp.runs]
                    fill_times(exp_runs[rate])
        text = report(args, params, scaling, single, exp, exp_runs)
        print(f"load average at end: {load_average()}")
        print(text, flush=True)
        return 0
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)


def cleanup() -> int:
    """--cleanup: delete the namespaces of benches that are gone; say what was kept."""
    removed, kept = netns.remove_stale()
    for name in removed:
        print(f"removed {name} (its bench's PID is gone)")
    for name in kept:
        print(f"kept {name} (PID {name.split('-')[1]} is alive)")
    print(f"{len(removed)} namespace(s) removed, {len(kept)} kept")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = netns.requirements_error(
        tools=("ip",) if args.cleanup else ("ip", "tc", "taskset")
        + (("setpriv", "sh") if args.worker_user != "root" else ()))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.cleanup:
        try:
            return cleanup()
        except netns.ClusterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_interrupted)
    try:
        return run(args)
    except Interrupted as e:
        print(f"\ninterrupted by {e}: workers killed, namespaces removed", file=sys.stderr)
        return 128 + e.signum
    except netns.ClusterError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
