"""Every cost benchmark in one sitting: what `make bench` runs.

    .venv/bin/python bench/all.py [--quick] [--only lars,ghost_bn] [--log runs/bench.log]

Runs, one after the other in subprocesses (each prints ratios measured side by side in its own
process, alternating rounds): LARS vs momentum SGD (lars_overhead.py), BA-Momentum projection /
diagonal vs momentum SGD per sample (ba_overhead.py), ghost BN vs Keras BN (ghost_bn.py), the
input wait of batch augmentation at M = 4 (batch_aug_pipeline.py), a batch-phase switch
(phase_switch.py), checkpoint cost (checkpoint_overhead.py) and the framework vs model.fit vs
the bare step in float32 and mixed_bfloat16 (vs_keras.py), TCMalloc vs glibc's malloc under a
real CLI run (allocator.py), and a TensorFlow process's start-up with and without jax
importable (startup.py). Before and after each it prints the 1-minute load average: absolute
throughputs on a shared machine are distorted, the ratios are the output. Ends with one
summary line per benchmark (its last lines). `--quick` shortens each (fewer
rounds/steps/examples) for a first look. Not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (script, full arguments, --quick arguments, how many closing lines summarise it)
BENCHES = {
    "lars": ("lars_overhead.py", [], ["--models", "cnn_fashion", "--rounds", "4"], 4),
    "ba": ("ba_overhead.py", [], ["--samples", "4000", "--rounds", "2"], 4),
    "ghost_bn": ("ghost_bn.py", ["--rounds", "4"], ["--rounds", "2", "--steps", "10"], 3),
    "batch_aug": ("batch_aug_pipeline.py", [], ["--steps", "20", "--rounds", "2"], 3),
    "phase_switch": ("phase_switch.py", [], ["--examples", "6000"], 4),
    "checkpoint": ("checkpoint_overhead.py", [], ["--models", "cnn_fashion", "--repeats", "5"],
                   3),
    "vs_keras": ("vs_keras.py", [], ["--examples", "6000", "--epochs", "2"], 24),
    "allocator": ("allocator.py", [], ["--rounds", "1", "--examples", "3200"], 5),
    "startup": ("startup.py", [], ["--rounds", "2"], 3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--log", default=None, help="also append everything to this file")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; choose from "
                         f"{', '.join(BENCHES)}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(args.log, "a") if args.log else None  # noqa: SIM115
    summary = []
    for name in names:
        script, full, quick, keep = BENCHES[name]
        cmd = [sys.executable, str(REPO / "bench" / script), *(quick if args.quick else full)]
        before, start = os.getloadavg()[0], time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        after, wall = os.getloadavg()[0], time.perf_counter() - start
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        head = (f"== {name}: {' '.join(cmd[1:])} (exit {proc.returncode}, {wall:.0f} s, "
                f"load average {before:.2f} -> {after:.2f})")
        text = "\n".join([head, *lines] + ([proc.stderr[-2000:]] if proc.returncode else []))
        print(text, flush=True)
        if log:
            log.write(text + "\n")
            log.flush()
        summary.append("\n".join([head, *lines[-keep:]]))
    print("\n==== summary ====\n" + "\n".join(summary), flush=True)


if __name__ == "__main__":
    main()
