"""TCMalloc vs glibc's malloc under a real training run (keras_largebatch/allocator.py).

Run (from the repository root):

    .venv/bin/python bench/allocator.py
    .venv/bin/python bench/allocator.py --rounds 3 --examples 6400 --repeats 2
    .venv/bin/python bench/allocator.py --smoke   # 1 round of 256 images: runs only

Each round runs the CLI twice on the same experiment, once on each allocator, in alternating
order (glibc first in even rounds: bench/timing.py's `alternate`), one TensorFlow thread each,
so both see the same machine load: `python -m keras_largebatch.main` on the batch-augmentation
experiment (seed-002 CNN with dropout, M = `--repeats` copies, `--examples` Fashion-MNIST
images, one epoch). Per run it reads, from getrusage of the child: wall time, user and system
CPU seconds, minor page faults. Printed: one line per run, the medians per allocator, the
wall-time ratio glibc / TCMalloc (> 1: TCMalloc faster), and whether every run's final weights
have the same sha256 (the allocator must not change a number). Exits 1 if they differ. Not a
test.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import alternate, bench_parser, median, session, smoke  # noqa: E402

from keras_largebatch.allocator import OPT_OUT_VAR, tcmalloc_available, with_tcmalloc  # noqa: E402


def run_once(env: dict, run_dir: str, args) -> dict:
    """One CLI training run; its wall time, CPU times and page faults from getrusage."""
    command = [sys.executable, "-m", "keras_largebatch.main",
               "--gin_file=gin/experiments/batch_aug_fashion_mnist.gin",
               "--gin_bindings=train.epochs = 1",
               f"--gin_bindings=train.repeats = {args.repeats}",
               f"--gin_bindings=fashion_mnist.max_train_examples = {args.examples}",
               "--gin_bindings=fashion_mnist.max_test_examples = 1000",
               f"--run_dir={run_dir}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"error: the training run failed (exit {proc.returncode}):\n"
                 f"{proc.stderr[-2000:]}")
    with open(os.path.join(run_dir, "results.json")) as f:
        sha = json.load(f)["weights_sha256"]
    return {"wall": wall, "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt, "sha": sha}


def main(argv=None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=6400)
    parser.add_argument("--repeats", type=int, default=2, help="batch augmentation copies M")
    args = smoke(parser.parse_args(argv), rounds=1, examples=256)
    if not tcmalloc_available():
        print("error: libtcmalloc-minimal4 is not installed; make install installs it",
              file=sys.stderr)
        return 2
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT_VAR)}
    base.update(TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS="1",
                TF_NUM_INTEROP_THREADS="1")
    envs = {"glibc": base, "tcmalloc": with_tcmalloc(base)}
    tmp = tempfile.mkdtemp(prefix="bench_allocator_")

    def variant(name):
        def one(r: int) -> dict:
            out = run_once(envs[name], os.path.join(tmp, f"{name}_{r}"), args)
            print(f"round {r} {name:8s} wall {out['wall']:6.1f} s  user {out['user']:6.1f} s"
                  f"  sys {out['sys']:5.1f} s  page faults {out['faults']:>9,d}", flush=True)
            return out
        return one

    with session(f"{args.rounds} rounds, {args.examples} images, M = {args.repeats}, 1 epoch, "
                 f"1 thread per run"):
        try:
            results = alternate({name: variant(name) for name in envs}, args.rounds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        med = {name: {key: median([o[key] for o in runs])
                      for key in ("wall", "user", "sys", "faults")}
               for name, runs in results.items()}
        for name, m in med.items():
            print(f"median {name:8s} wall {m['wall']:6.1f} s  user {m['user']:6.1f} s  "
                  f"sys {m['sys']:5.1f} s  page faults {m['faults']:>9,.0f}")
        shas = {o["sha"] for runs in results.values() for o in runs}
        print(f"same final weights on both allocators: {len(shas) == 1}")
        print(f"wall time glibc / tcmalloc: "
              f"{med['glibc']['wall'] / med['tcmalloc']['wall']:.2f}x; system time glibc / "
              f"tcmalloc: {med['glibc']['sys'] / max(med['tcmalloc']['sys'], 1e-9):.1f}x")
    return 0 if len(shas) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
