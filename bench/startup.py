"""Start-up cost of a TensorFlow process with and without jax importable.

Run (from the repository root, after `make test` has installed .jax-packages/):

    .venv/bin/python bench/startup.py
    .venv/bin/python bench/startup.py --rounds 5
    .venv/bin/python bench/startup.py --smoke      # 1 round (2 processes): runs, no number

TensorFlow imports jax whenever it is importable (TF Lite's `from jax import jit`,
tensorflow/lite/python/util.py), although nothing on the TensorFlow backend uses it; this is
why jax lives in `.jax-packages/` outside the venv (tests/backend_env.py). Each round runs the
real CLI on a refused input (`--gin_bindings='train.seed = -1'`: import everything, parse the
config, one `error:` line, exit 2, nothing written), once with `.jax-packages` on PYTHONPATH
and once without, alternating which goes first (bench/timing.py's `alternate`), so both see the
same machine load. Per run,
from getrusage of the child: wall time and user + system CPU seconds. Printed: one line per
run, the medians of each side, and the ratio with / without jax (> 1: jax costs that much
more per process). Not a test.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import alternate, bench_parser, median, session, smoke

REPO = Path(__file__).resolve().parents[1]
JAX_PACKAGES = REPO / ".jax-packages"


def run_once(with_jax: bool, run_dir: str) -> tuple[float, float]:
    """Wall and CPU seconds of one refused CLI run (exit 2 asserted)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    if with_jax:
        env["PYTHONPATH"] = str(JAX_PACKAGES)
    command = [sys.executable, "-m", "keras_largebatch.main", "--gin_file=gin/tests/tiny.gin",
               "--gin_bindings=train.seed = -1", f"--run_dir={run_dir}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 2 or "error: train.seed" not in proc.stderr:
        sys.exit(f"error: the CLI did not refuse train.seed = -1 as expected:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = smoke(parser.parse_args(argv), rounds=1)
    if not (JAX_PACKAGES / "jax").is_dir():
        sys.exit(f"error: {JAX_PACKAGES} has no jax; run `make test` once to install it")
    with tempfile.TemporaryDirectory() as tmp, session(
            f"TensorFlow process start-up with / without jax, {args.rounds} rounds"):
        def side(with_jax: bool):
            def one(r: int) -> tuple[float, float]:
                wall, cpu = run_once(with_jax, os.path.join(tmp, "run"))
                print(f"round {r}: {'with jax   ' if with_jax else 'without jax'} "
                      f"wall {wall:5.2f} s  cpu {cpu:5.2f} s", flush=True)
                return wall, cpu
            return one

        sides = alternate({True: side(True), False: side(False)}, args.rounds)
        med = {k: (median([w for w, _ in v]), median([c for _, c in v]))
               for k, v in sides.items()}
        print(f"median without jax: wall {med[False][0]:.2f} s, cpu {med[False][1]:.2f} s")
        print(f"median with jax:    wall {med[True][0]:.2f} s, cpu {med[True][1]:.2f} s")
        print(f"ratio with / without jax: wall {med[True][0] / med[False][0]:.3f}, "
              f"cpu {med[True][1] / med[False][1]:.3f}")


if __name__ == "__main__":
    main()
