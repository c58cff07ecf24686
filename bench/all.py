"""Every cost benchmark in one sitting: what `make bench` runs.

    .venv/bin/python bench/all.py [--quick | --smoke] [--only lars,ghost_bn] [--log runs/bench.log]

Runs, one after the other, each in its own process (so one bench's threads, caches and traced
functions cannot colour the next one's numbers; each prints ratios measured side by side in its
own process, alternating rounds, with the machine line of bench/timing.py: CPU flags and load
average): LARS vs momentum SGD (lars_overhead.py), BA-Momentum projection / diagonal vs
momentum SGD per sample (ba_overhead.py), ghost BN vs Keras BN (ghost_bn.py), the input wait of
batch augmentation at M = 4 (batch_aug_pipeline.py), a batch-phase switch (phase_switch.py),
checkpoint cost (checkpoint_overhead.py), the framework vs model.fit vs the bare step in
float32 and mixed_bfloat16 (vs_keras.py), the framework's compiled step vs model.fit on one
pipeline (loop_overhead.py), model.fit's epochs after the first (fit_slowdown.py), LARS / ghost
BN / BA-Momentum through plain model.fit on the current Keras backend (backends.py), TCMalloc
vs glibc's malloc under a real CLI run (allocator.py), and a TensorFlow process's start-up with
and without jax importable (startup.py), the gradient-noise-scale probe in the train step
(noise_scale_overhead.py), and the host's time per update at K updates per compiled call on a
~1 ms step (host_overhead.py), and where BA-Momentum's extra time per chunk goes
(ba_parts.py). Before and after each it prints the 1-minute load
average: absolute throughputs on a shared machine are distorted, the ratios are the output.
Ends with one summary line per benchmark (its last lines) and exits 1 if any bench failed.
`--quick` shortens each (fewer rounds/steps/examples) for a first look; `--smoke` runs each at
its smallest size (a check that every bench still runs: its numbers mean nothing). Not a test.

Left out (LEFT_OUT below), and why:
- cluster.py: needs root, network namespaces, iproute2 and taskset, and runs ~40 min at its
  defaults; run it on its own (its docstring; its tests are tests/bench/test_cluster.py).
- ray_dispatch.py: needs Ray (pip install -e '.[ray]'), starts its own Ray and ~16 real CLI
  runs (~2 min); run it on its own (its docstring).
- goodput_study.py: bench/cluster.py's experiment over 3 seeds and 2 link rates plus a
  validation run (root, network namespaces, ~80 min); run it on its own (its docstring).
Not benches: timing.py (the shared timing harness), netns.py (cluster.py's namespaces),
cluster_report.py (its tables), cost_model.py (its cost model), goodput_study_report.py
(goodput_study.py's report).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from timing import bench_parser, machine_line

REPO = Path(__file__).resolve().parents[1]

# name: (script, full arguments, --quick arguments, how many closing lines summarise it)
BENCHES = {
    "lars": ("lars_overhead.py", [], ["--models", "cnn_fashion", "--rounds", "4"], 5),
    "ba": ("ba_overhead.py", [], ["--samples", "4000", "--rounds", "2"], 5),
    "ghost_bn": ("ghost_bn.py", ["--rounds", "4"], ["--rounds", "2", "--steps", "10"], 4),
    "batch_aug": ("batch_aug_pipeline.py", [], ["--steps", "20", "--rounds", "2"], 4),
    "phase_switch": ("phase_switch.py", [], ["--examples", "6000"], 3),
    "checkpoint": ("checkpoint_overhead.py", [], ["--models", "cnn_fashion", "--repeats", "5"],
                   4),
    "vs_keras": ("vs_keras.py", [], ["--examples", "6000", "--epochs", "2"], 25),
    "loop": ("loop_overhead.py", [], ["--rounds", "2", "--steps", "50"], 3),
    "fit_slowdown": ("fit_slowdown.py", [], ["--examples", "12800", "--epochs", "2"], 4),
    "backends": ("backends.py", [], ["--steps", "10", "--rounds", "2"], 5),
    "allocator": ("allocator.py", [], ["--rounds", "1", "--examples", "3200"], 5),
    "startup": ("startup.py", [], ["--rounds", "2"], 4),
    "noise_scale": ("noise_scale_overhead.py", [], ["--rounds", "4"], 3),
    "host_overhead": ("host_overhead.py", [], ["--rounds", "1", "--examples", "6400"], 12),
    "ba_parts": ("ba_parts.py", [], ["--rounds", "2", "--chunks", "10"], 10),
}
# Scripts under bench/ that are not run here: script -> why (the docstring says more).
LEFT_OUT = {
    "cluster.py": "needs root and network namespaces; ~40 min at its defaults",
    "ray_dispatch.py": "needs Ray; starts its own Ray and ~16 real CLI runs",
    "goodput_study.py": "needs root and network namespaces; bench/cluster.py over 3 seeds x 2 "
                        "link rates, ~80 min",
}
NOT_BENCHES = ("all.py", "timing.py", "netns.py", "cost_model.py", "cluster_report.py",
               "goodput_study_report.py")


def command(name: str, size: str) -> list[str]:
    """The bench's command line at size 'full', 'quick' or 'smoke'."""
    script, full, quick, _ = BENCHES[name]
    extra = {"full": full, "quick": quick, "smoke": ["--smoke"]}[size]
    return [sys.executable, str(REPO / "bench" / script), *extra]


def main(argv=None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--log", default=None, help="also append everything to this file")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} in --only; choose from "
                     f"{', '.join(BENCHES)}")
    if args.quick and args.smoke:
        parser.error("--quick and --smoke together; give one")
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    summary, failed = [machine_line()], []
    for name in names:
        cmd = command(name, size)
        keep = BENCHES[name][3]
        before, start = os.getloadavg()[0], time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        after, wall = os.getloadavg()[0], time.perf_counter() - start
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        head = (f"== {name}: {' '.join(cmd[1:])} (exit {proc.returncode}, {wall:.0f} s, "
                f"load average {before:.2f} -> {after:.2f})")
        text = "\n".join([head, *lines] + ([proc.stderr[-2000:]] if proc.returncode else []))
        print(text, flush=True)
        if args.log:
            with open(args.log, "a") as log:
                log.write(text + "\n")
        summary.append("\n".join([head, *lines[-keep:]]))
        if proc.returncode:
            failed.append(name)
    print("\n==== summary ====\n" + "\n".join(summary), flush=True)
    if failed:
        print(f"error: {len(failed)} bench(es) failed: {', '.join(failed)} (output above)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
