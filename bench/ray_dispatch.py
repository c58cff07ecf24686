"""Overhead of dispatching a study's runs through Ray instead of local subprocesses.

Run (from the repository root, with Ray installed: `make test` or pip install -e '.[ray]'):

    .venv/bin/python bench/ray_dispatch.py                 # 4 tiny runs, 2 rounds
    .venv/bin/python bench/ray_dispatch.py --runs 6 --rounds 3
    .venv/bin/python bench/ray_dispatch.py --smoke         # 2 runs, 1 round: runs, no number

The same tiny study (gin/tests/tiny.gin on 2000 / 1000 examples, 1 epoch, one run per learning
rate) is swept twice per round into fresh folders: `run_sweep(parallel=2)` (the local executor)
and `run_sweep(ray=RayOptions())` (studies/executors.py: a fresh single-node Ray started by
ray.init on this machine, 1 CPU per run, so 2 runs at once either way, and shut down at the
end). Rounds alternate which goes first so both see the same machine load. Printed per round:
the wall time of each sweep, Ray / local, and (Ray - local) / runs, the overhead per run
including Ray's start and shutdown, which a real study pays once; then the medians. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def machine_line() -> str:
    """CPU model, cores, AVX flags (grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx2)\b", info)))
    return (f"machine: {model.group(1) if model else platform.processor()}, "
            f"{os.cpu_count()} cores, {' '.join(flags) or 'no avx2/avx512'}")


def load_line() -> str:
    return "load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def study(runs: int):
    from keras_largebatch.studies import grid

    return grid.sweep(base_gin_files=["gin/tests/tiny.gin"], base_bindings=[
        "fashion_mnist.max_train_examples = 2000", "fashion_mnist.max_test_examples = 1000",
        "train.batch_size = 250", "train.epochs = 1"],
        grid={"train.learning_rate": [0.01 * (i + 1) for i in range(runs)]})


def sweep_seconds(kind: str, runs: int, root: str) -> float:
    from keras_largebatch.studies import sweep as sw
    from keras_largebatch.studies.executors import RayOptions

    out = tempfile.mkdtemp(prefix=f"{kind}-", dir=root)
    start = time.perf_counter()
    rows = sw.run_sweep(study(runs), sweep_dir=out, echo=lambda _: None,
                        **({"parallel": 2} if kind == "local" else {"ray": RayOptions()}))
    seconds = time.perf_counter() - start
    bad = [f"{r['run']} ({r['status']}: {r.get('error') or '?'})" for r in rows
           if r["status"] != "completed"]
    if bad:
        kept = shutil.copytree(out, tempfile.mkdtemp(prefix=f"ray_dispatch_{kind}_failed_"),
                               dirs_exist_ok=True)  # out goes with root at the end
        raise SystemExit(f"error: {kind} sweep: runs did not complete: {'; '.join(bad)}; "
                         f"logs copied to {kept}/logs")
    shutil.rmtree(out)
    return seconds


def report(runs: int, local: float, ray: float, start: float) -> str:
    return (f"{runs} runs, local {local:.1f} s, ray {ray:.1f} s, ray/local {ray / local:.2f}, "
            f"(ray - local)/run {(ray - local) / runs:+.2f} s, ray start+shutdown {start:.1f} s, "
            f"(ray - local - start)/run {(ray - local - start) / runs:+.2f} s")


def ray_start_seconds() -> float:
    import logging

    import ray

    start = time.perf_counter()
    ray.init(log_to_driver=False, logging_level=logging.WARNING)
    ray.shutdown()
    return time.perf_counter() - start


def noop_seconds(kind: str, jobs: int, root: str) -> list[float]:
    """Seconds from submit to outcome of `jobs` /bin/true jobs, one at a time, via `kind`."""
    from keras_largebatch.studies.executors import Job, LocalExecutor, RayExecutor, RayOptions

    folder = tempfile.mkdtemp(prefix=f"noop-{kind}-", dir=root)
    lock_fd = os.open(os.path.join(folder, "lock"), os.O_RDWR | os.O_CREAT)
    executor = LocalExecutor(1, lock_fd) if kind == "local" else RayExecutor(RayOptions())
    seconds = []
    try:
        for i in range(jobs):
            job = Job(f"noop{i}", ("/bin/true",), os.path.join(folder, f"noop{i}.log"), folder)
            start = time.perf_counter()
            executor.submit(job)
            outcomes = []
            while not outcomes:
                outcomes = executor.wait(0.005)
            seconds.append(time.perf_counter() - start)
            if outcomes[0].returncode != 0:
                raise SystemExit(f"error: {kind} no-op job: {outcomes[0]}")
    finally:
        executor.close()
        os.close(lock_fd)
    return seconds


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--noop_jobs", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 runs, 1 round; no number")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1:
        parser.exit(2, f"error: --runs={args.runs} --rounds={args.rounds}: both must be >= 1\n")
    if args.smoke:
        args.runs, args.rounds, args.noop_jobs = 2, 1, 2
    root = tempfile.mkdtemp(prefix="ray_dispatch")
    os.environ["RAY_TMPDIR"] = root  # a fresh Ray of our own, not a cluster found in /tmp/ray
    os.makedirs(os.path.join(root, "ray"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    print(machine_line())
    print(load_line())
    try:
        times: dict[str, list[float]] = {"local": [], "ray": [], "start": []}
        for r in range(args.rounds):
            order = ["local", "ray"] if r % 2 == 0 else ["ray", "local"]
            for kind in order:
                times[kind].append(sweep_seconds(kind, args.runs, root))
            times["start"].append(ray_start_seconds())
            print(f"round {r + 1} ({' then '.join(order)}): "
                  + report(args.runs, *(times[k][-1] for k in ("local", "ray", "start"))))
        if not args.smoke:
            print(f"median over {args.rounds} rounds: " + report(
                args.runs, *(statistics.median(times[k]) for k in ("local", "ray", "start"))))
        noop = {kind: noop_seconds(kind, args.noop_jobs, root) for kind in ("local", "ray")}
        for kind, seconds in noop.items():
            print(f"no-op job via {kind}: median {statistics.median(seconds):.3f} s, max "
                  f"{max(seconds):.3f} s over {len(seconds)} jobs")
        print(f"dispatch per job, ray - local: "
              f"{statistics.median(noop['ray']) - statistics.median(noop['local']):+.3f} s "
              "(medians)")
    finally:
        print(load_line())
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
