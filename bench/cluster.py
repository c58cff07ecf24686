"""Emulated cluster benchmark: real CLI workers in network namespaces over tbf-capped veth links.

Run as root from the repository root (iproute2 and taskset needed; ~40 min at the defaults):

    .venv/bin/python bench/cluster.py
    .venv/bin/python bench/cluster.py --rates=100mbit --experiment_rates=100mbit --epochs=4
    .venv/bin/python bench/cluster.py --experiment=lars --parts=experiment
    .venv/bin/python bench/cluster.py --predict_workers=8 --predict_rate=10gbit \
        --predict_params=25600000 --keep_logs=runs/cluster_bench

Each worker is one `python -m keras_largebatch.main` process in its own network namespace
(`klb-<pid>-w<i>`, bench/netns.py), pinned to core i with taskset, with TF_CONFIG naming the
workers' addresses on the veth link (10.253.0.<i+1>:12345); every link end is capped with
`tc ... tbf rate R` (R from --rates). The single-worker baseline is one such process pinned to
core 0 with no TF_CONFIG at the same global batch. Namespaces and links are removed at exit,
also on Ctrl-C/SIGTERM and when a worker fails; workers are killed by PID.

Printed, in one run:
 1. scaling (--parts scaling): samples/s of 1 worker and of --workers workers at global batch
    --scaling_batch for each link rate in --rates, and the speed-up. Samples/s are results.json
    `samples_per_second` of epochs 2.. (epoch 1 holds tracing and pipeline start-up); a
    1-worker run at the per-worker batch (--scaling_batch / --workers) gives the cost model
    the compute time alone.
 2. the experiment (--parts experiment) at every rate in --experiment_rates:
    adabatch (seed 000): ResNet-20 on --examples Fashion-MNIST images, fixed 128, fixed 1024
      and AdaBatch 128 -> 1024 (x2 every --epochs/4 epochs, LR x0.75; fixed runs LR x0.375);
    lars (seed 004): LARS at fixed 4096 vs momentum SGD at 128 (lars_fashion_mnist.gin's
      schedule, 1 warm-up epoch).
    Time = sum of the runs' `epoch_time_s` (training steps only: no evaluation, no start-up),
    with epoch 1 of each run replaced by the median epoch time of later epochs at the same
    batch and rate (any run of the experiment); marked * where no such epoch exists. Also
    printed: results.json `wall_time_s` (all epochs, with evaluation), `final_test_accuracy`,
    the speed-up over the baseline (fixed 128 / sgd 128).
 3. a cost model (bench/cost_model.py) fitted to every steady epoch measured above, its
    prediction next to each measured row, and its prediction for the cluster named by
    --predict_workers, --predict_rate, --predict_params (default: the measured one).
The last line: `<experiment> speed-up over <baseline>: <x>x at <rate> (accuracy <a> vs <b>)`
at the slowest experiment rate. Numbers depend on the machine's load: the load average is
printed at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cost_model  # noqa: E402
import netns  # noqa: E402

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


@dataclass
class Measured:
    label: str
    workers: int
    rate: str | None
    results: dict
    time_s: float = 0.0
    estimated_first: bool = False
    batches: list[int] = field(default_factory=list)


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
        ], baseline="fixed 128", headline="adabatch 128->1024")
    common = [f"PolynomialDecay.total_epochs = {epochs}", "LinearWarmup.warmup_epochs = 1"]
    return Experiment(name, [
        RunSpec("sgd 128", LARS_GIN, [*common, "train.optimizer = 'momentum'",
                                      "train.batch_size = 128", "PolynomialDecay.initial = 0.05"]),
        RunSpec("lars 4096", LARS_GIN, [*common, "train.batch_size = 4096",
                                        "PolynomialDecay.initial = 10.0"]),
    ], baseline="sgd 128", headline="lars 4096")


class Bench:
    def __init__(self, args, cluster: netns.EmulatedCluster, workdir: Path):
        self.args, self.cluster, self.workdir = args, cluster, workdir
        self.count = 0

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
        env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        if workers > 1:
            hosts = [f"{a}:{PORT}" for a in self.cluster.addresses[:workers]]
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts},
                                           "task": {"type": "worker", "index": index}})
        return env

    def folder(self, what: str) -> Path:
        self.count += 1
        path = self.workdir / f"{self.count:02d}-{re.sub(r'[^A-Za-z0-9.]+', '_', what)}"
        path.mkdir(parents=True)
        return path

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


# ---- timings -------------------------------------------------------------------------------------

def steady_epochs(m: Measured) -> list[dict]:
    """Epochs 2.. (epoch 1 holds tracing and start-up); epoch 1 if it is the only one."""
    epochs = m.results["epochs"]
    return epochs[1:] if len(epochs) > 1 else epochs


def samples_per_second(m: Measured) -> float:
    return statistics.median(e["samples_per_second"] for e in steady_epochs(m))


def fill_times(runs: list[Measured]) -> None:
    """time_s of each run: epoch_time_s summed, epoch 1 replaced (see the module docstring)."""
    later: dict[int, list[float]] = {}
    for m in runs:
        for e in m.results["epochs"][1:]:
            later.setdefault(e["batch_size"], []).append(e["epoch_time_s"])
    for m in runs:
        epochs = m.results["epochs"]
        first = epochs[0]
        m.estimated_first = first["batch_size"] not in later
        t1 = (first["epoch_time_s"] if m.estimated_first
              else statistics.median(later[first["batch_size"]]))
        m.time_s = t1 + sum(e["epoch_time_s"] for e in epochs[1:])


def observations(runs: list[Measured], params: int) -> list[cost_model.Observation]:
    out = []
    for m in runs:
        rate = netns.parse_rate(m.rate) if m.rate else None
        for e in steady_epochs(m):
            out.append(cost_model.Observation(m.workers, e["batch_size"], rate, params,
                                              e["batch_size"] / e["samples_per_second"]))
    return out


# ---- report --------------------------------------------------------------------------------------

def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(args, params: int, scaling: dict, single: Measured | None, exp: Experiment | None,
           exp_runs: dict[str, list[Measured]]) -> str:
    lines = []
    all_runs = ([single] if single else []) + list(scaling.get("extra", [])) + \
        list(scaling.get("multi", {}).values()) + [m for ms in exp_runs.values() for m in ms]
    model = cost_model.fit(observations(all_runs, params))
    w = args.workers

    if single is not None:
        b = args.scaling_batch
        lines += ["", f"1. scaling: {args.model}, global batch {b}, {args.examples} examples per "
                  "epoch; samples/s = median of epochs 2.. (results.json samples_per_second)",
                  f"{'link':>10} {'1 worker':>10} {f'{w} workers':>10} {'speed-up':>9} "
                  f"{'model: samples/s':>17} {'speed-up':>9}"]
        s1 = samples_per_second(single)
        for rate, m in scaling["multi"].items():
            sw = samples_per_second(m)
            bps = netns.parse_rate(rate)
            p1 = b / model.step_time(1, b, None, params)
            pw = b / model.step_time(w, b, bps, params)
            lines.append(f"{rate:>10} {s1:10.1f} {sw:10.1f} {sw / s1:8.2f}x "
                         f"{pw:17.1f} {pw / p1:8.2f}x")

    if exp is not None:
        lines += ["", f"2. {exp.name}: {args.model}, {args.epochs} epochs of {args.examples} "
                  f"examples, {w} workers; time = sum of epoch_time_s, epoch 1 replaced by the "
                  "median later epoch at its batch (* = not available, raw epoch 1)",
                  f"{'link':>10} {'run':<20} {'batch per epoch':<22} {'time s':>8} "
                  f"{'wall s':>7} {'test acc':>8} {'speed-up':>9} {'model: time s':>14} "
                  f"{'speed-up':>9}"]
        for rate, runs in exp_runs.items():
            bps = netns.parse_rate(rate)
            base = next(m for m in runs if m.label == exp.baseline)
            pbase = model.run_time(w, base.batches, args.examples, bps, params)
            for m in runs:
                pt = model.run_time(w, m.batches, args.examples, bps, params)
                star = "*" if m.estimated_first else " "
                lines.append(
                    f"{rate:>10} {m.label:<20} {','.join(map(str, m.batches)):<22} "
                    f"{m.time_s:7.1f}{star} {m.results['wall_time_s']:7.1f} "
                    f"{m.results['final_test_accuracy']:8.4f} {base.time_s / m.time_s:8.2f}x "
                    f"{pt:14.1f} {pbase / pt:8.2f}x")

    pw_, prate = args.predict_workers or w, args.predict_rate
    pparams = args.predict_params or params
    pbps = netns.parse_rate(prate) if prate else None
    lines += ["", f"3. cost model, fitted to {len(observations(all_runs, params))} steady "
              f"epochs above (in-sample: its predictions above are not independent checks): "
              f"{model.describe()}",
              f"   prediction for {pw_} workers at {prate or 'an unshaped link'}, {pparams:,} "
              f"parameters ({4 * pparams / 1e6:.2f} MB float32; measured model: {params:,})"]
    if model.rank < 4:
        lines.append("   (not all parameters pinned: run both parts, at >= 2 rates, for a "
                     "prediction that means something)")
    b = args.scaling_batch
    sp = model.step_time(1, b, None, pparams) / model.step_time(pw_, b, pbps, pparams)
    lines.append(f"   scaling at global batch {b}: {pw_} workers vs 1: {sp:.2f}x")
    if exp is not None:
        batches = {m.label: m.batches for m in exp_runs[next(iter(exp_runs))]}
        tb = model.run_time(pw_, batches[exp.baseline], args.examples, pbps, pparams)
        for label, bs in batches.items():
            if label != exp.baseline:
                t = model.run_time(pw_, bs, args.examples, pbps, pparams)
                lines.append(f"   {label} over {exp.baseline}: {tb / t:.2f}x")
        lines.append("")
        for rate in sorted(exp_runs, key=lambda r: -(netns.parse_rate(r) or float("inf"))):
            runs = {m.label: m for m in exp_runs[rate]}
            h, bl = runs[exp.headline], runs[exp.baseline]
            lines.append(f"{exp.headline.split()[0]} speed-up over {exp.baseline}: "
                         f"{bl.time_s / h.time_s:.2f}x at {rate} (accuracy "
                         f"{h.results['final_test_accuracy']:.4f} vs "
                         f"{bl.results['final_test_accuracy']:.4f})")
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", choices=("adabatch", "lars"), default="adabatch")
    p.add_argument("--parts", default="scaling,experiment",
                   help="comma list of: scaling, experiment")
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
    args.parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not args.parts or not args.parts <= {"scaling", "experiment"}:
        p.error("--parts: a comma list of scaling, experiment")
    if args.workers < 2:
        p.error("--workers must be >= 2")
    if args.examples is None:
        args.examples = 16384 if args.experiment == "lars" else 6400
    try:
        args.rates = [r.strip() for r in args.rates.split(",") if r.strip()]
        args.experiment_rates = [r.strip() for r in args.experiment_rates.split(",")
                                 if r.strip()]
        for r in [*args.rates, *args.experiment_rates, args.predict_rate]:
            if r is not None:
                netns.parse_rate(r)
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
    print(f"emulated cluster: {args.workers} workers, one network namespace and one core "
          f"each ({os.cpu_count()} cores here); load average at start: {load()}", flush=True)
    try:
        with netns.EmulatedCluster(args.workers) as cluster:
            print(f"namespaces {', '.join(cluster.namespaces)}; logs in {workdir}", flush=True)
            bench = Bench(args, cluster, workdir)
            exp = experiment(args.experiment, args.epochs) if "experiment" in args.parts \
                else None
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
        print(f"load average at end: {load()}")
        print(text, flush=True)
        return 0
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    problem = netns.requirements_error()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
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
