"""Issue 29's study on the emulated cluster: GoodputBatch against the hand-set schedules, over
seeds and link rates, and an out-of-sample check of the throughput model. Run as root from the
repository root (what bench/cluster.py needs); ~80 min at the defaults on a 2-core machine:

    .venv/bin/python bench/goodput_study.py                      # runs, then the report
    .venv/bin/python bench/goodput_study.py --report_only        # the report from runs/ only
    .venv/bin/python bench/goodput_study.py --smoke              # tiny CNN, 1 seed, 1 rate

Each seed is one `bench/cluster.py --parts=experiment` call (fixed 128, fixed 1024, AdaBatch
128 -> 1024 and GoodputBatch 128..1024; 2 workers, one core and one network namespace each) at
every rate in --rates, with `train.seed = <seed>` and `resnet20.bn_momentum = 0.9` (as in
BUILD_NOTES "Emulated cluster"). Then one `--parts=scaling` call at --validation_rate and
--validation_batch: points the throughput model was not fitted on (another link rate, another
batch, and one worker).

What is kept, in --out (default runs/results/goodput_cluster): per run
`<seed>/<rate>/<arm>.json` (the run's results.json) and per cluster.py call its printed output
(`cluster.log`); the workers' run folders (checkpoints, TensorBoard) are left in a temporary
folder and deleted. A folder that already holds a seed's results is not run again (delete it to
rerun). The report is bench/goodput_study_report.py, from these files alone.

    .venv/bin/python bench/goodput_study.py --rerun_arm="goodput 128..1024"

runs one arm again on every kept seed (after a change to that arm's code: the other arms'
results stay), replacing its `<seed>/<rate>/<arm>.json`; that call's output is kept as
`<seed>/rerun_<arm>.log` and the rerun is listed in `reruns.json` (arm, date, commit).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402
from timing import bench_parser, machine_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "bench" / "cluster.py"
FOLDER = re.compile(r"^\d+-(?P<label>.+)_(?P<workers>\d+)w_(?P<rate>[^_]+)$")  # cluster.py folder()


def parse_args(argv):
    p = bench_parser(__doc__)
    p.add_argument("--out", default="runs/results/goodput_cluster")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rates", default="100mbit,20mbit")
    p.add_argument("--examples", type=int, default=12800)
    p.add_argument("--test_examples", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--validation_rate", default="30mbit")
    p.add_argument("--validation_batch", type=int, default=512)
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--rerun_arm", default="",
                   help="run this arm of bench/cluster.py's experiment again on the kept seeds")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: a comma list of integers; got {args.seeds!r}")
    if not args.seeds:
        p.error("--seeds: give at least one seed, e.g. --seeds=0,1,2")
    for flag, rates in (("--rates", args.rates.split(",")),
                        ("--validation_rate", [args.validation_rate])):
        for rate in rates:
            try:
                if netns.parse_rate(rate.strip()) is None:
                    raise ValueError(f"{rate!r} is not a link rate; give e.g. 100mbit")
            except ValueError as e:
                p.error(f"{flag}: {e}")
    if args.rerun_arm:
        import cluster  # the experiment's run labels (no TensorFlow)

        labels = [r.label for r in cluster.experiment("adabatch", args.epochs).runs]
        if args.rerun_arm not in labels:
            p.error(f"--rerun_arm: {args.rerun_arm!r} is not an arm of the study; give one of: "
                    f"{', '.join(labels)}")
        if args.report_only or args.smoke:
            p.error("--rerun_arm runs an arm of a kept study: not with --report_only or --smoke")
    if args.smoke:  # never into runs/: a temporary folder unless --out is given
        if args.out == p.get_default("out"):
            args.out = tempfile.mkdtemp(prefix="klb-goodput-smoke-")
        args.seeds, args.rates, args.examples, args.test_examples = [0], "100mbit", 1024, 200
        args.epochs = 2
    return args


def cluster_call(extra: list[str], args) -> tuple[int, str, Path]:
    """Run bench/cluster.py with --keep_logs in a temporary folder; (status, output, folder)."""
    work = Path(tempfile.mkdtemp(prefix="klb-goodput-study-"))
    work.chmod(0o755)
    common = [f"--examples={args.examples}", f"--test_examples={args.test_examples}",
              f"--keep_logs={work}", "--timeout=2400"]
    if args.smoke:
        common += ["--model=cnn_fashion", "--gin_bindings=cnn_fashion.filters = (8, 16)"]
    else:
        common += ["--gin_bindings=resnet20.bn_momentum = 0.9"]
    cmd = [sys.executable, str(CLUSTER), *common, *extra]
    print("$ " + " ".join(cmd), flush=True)
    out = work / "cluster.out"  # a file, not a pipe: a dead pipe reader stopped cluster.py
    # before its clean-up (the namespaces were left for --cleanup)
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C / SIGTERM: cluster.py kills its workers, deletes links
            proc.send_signal(signal.SIGINT)
            proc.wait()
            shutil.rmtree(work, ignore_errors=True)
            raise
    text = out.read_text()
    sys.stdout.write(text[-4000:])
    return code, text, work


def call_and_keep(args, target: Path, what: str, log: str, cluster_args: list[str]) -> bool:
    """Run bench/cluster.py with `cluster_args`, keep its results in `target` (keep()) and
    remove its folder; False after one error line when it failed."""
    code, output, work = cluster_call(cluster_args, args)
    try:
        if code != 0:
            print(f"error: bench/cluster.py failed for {what} (exit {code}); its output is "
                  f"above", file=sys.stderr)
            return False
        keep(work, target, output, log=log)
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def keep(work: Path, target: Path, output: str, log: str = "cluster.log") -> int:
    """Copy each run's results.json from cluster.py's folder into target/<rate>/<arm>.json."""
    n = 0
    for folder in sorted(work.iterdir()):
        m = FOLDER.match(folder.name)
        results = folder / "run" / "results.json"
        if not m or not results.exists():
            continue
        dest = target / m["rate"] / f"{m['label']}_{m['workers']}w.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results, dest)
        n += 1
    (target / log).write_text(output)
    return n


def settings(args) -> dict:
    return {"seeds": args.seeds, "rates": args.rates.split(","), "examples": args.examples,
            "test_examples": args.test_examples, "epochs": args.epochs,
            "validation_rate": args.validation_rate, "validation_batch": args.validation_batch,
            "model": "cnn_fashion" if args.smoke else "resnet20"}


def check_out(args) -> str | None:
    """The one-line refusal for --out, or None: a folder holding another study's settings
    (kept seeds would be mixed with new ones), or no study at all for --report_only."""
    study = (REPO / args.out).resolve() / "study.json"
    if not study.exists():
        return (f"no study in {args.out} (no study.json); run bench/goodput_study.py without "
                "--report_only or --rerun_arm first, or give its --out"
                if args.report_only or args.rerun_arm else None)
    if not args.report_only and json.loads(study.read_text()) != settings(args):
        return (f"{args.out} holds a study with other settings ({study}); give another --out "
                "or delete that folder to start again")
    return None


def rerun(args) -> int:
    """--rerun_arm: that arm again on every seed already kept (module docstring)."""
    out = (REPO / args.out).resolve()
    print(machine_line(), flush=True)
    name = re.sub(r"[^A-Za-z0-9.]+", "_", args.rerun_arm)
    for seed in args.seeds:
        target = out / f"seed{seed}"
        if not (target / "cluster.log").exists():
            print(f"seed {seed}: no kept results in {target}, nothing to rerun", flush=True)
            continue
        if not call_and_keep(args, target, f"seed {seed}", f"rerun_{name}.log", [
                "--parts=experiment", f"--experiment_rates={args.rates}",
                f"--epochs={args.epochs}", f"--arms={args.rerun_arm}",
                f"--gin_bindings=train.seed = {seed}"]):
            return 1
        log = out / "reruns.json"
        done = json.loads(log.read_text()) if log.exists() else []
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        done.append({"arm": args.rerun_arm, "seed": seed, "commit": commit,
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        log.write_text(json.dumps(done, indent=1))
    return 0


def run(args) -> int:
    out = (REPO / args.out).resolve()
    print(machine_line(), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(settings(args), indent=1))
    for seed in args.seeds:
        target = out / f"seed{seed}"
        if (target / "cluster.log").exists():
            print(f"seed {seed}: kept results in {target}, not run again", flush=True)
            continue
        if not call_and_keep(args, target, f"seed {seed}", "cluster.log", [
                "--parts=experiment", f"--experiment_rates={args.rates}",
                f"--epochs={args.epochs}", f"--gin_bindings=train.seed = {seed}"]):
            return 1
    target = out / "validation"
    if not args.smoke and not (target / "cluster.log").exists():
        if not call_and_keep(args, target, "validation", "cluster.log", [
                "--parts=scaling", f"--rates={args.validation_rate}",
                f"--scaling_batch={args.validation_batch}", "--scaling_epochs=2"]):
            return 1
    return 0


def _interrupt(signum, _frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    refusal = check_out(args)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    if not args.report_only:
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            code = rerun(args) if args.rerun_arm else run(args)
        except KeyboardInterrupt:
            print(f"error: interrupted; the seeds finished so far are kept in {args.out} and "
                  "are not run again", file=sys.stderr)
            return 130
        if code:
            return code
    import goodput_study_report  # after the runs: a report needs no TensorFlow

    print(goodput_study_report.report(REPO / args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
