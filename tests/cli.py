"""Helpers to drive the real CLI in a subprocess (tests only)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--gin_file=gin/tests/tiny.gin"]


def cli_command(faults: list[str] | tuple = ()) -> list[str]:
    """The CLI command; with `faults` (tests/faults.py) the same main with faults injected."""
    if faults:
        return [sys.executable, "-m", "tests.faults", *faults, "--"]
    return [sys.executable, "-m", "keras_largebatch.main"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300,
            script: str | None = None, faults: list[str] | tuple = ()
            ) -> subprocess.CompletedProcess:
    """Run `python -m keras_largebatch.main ARGS` (or a console script) from the repo root.

    `faults`: e.g. ["kill_at_step=25"], injected by tests/faults.py."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    cmd = [script] if script else cli_command(faults)
    return subprocess.run([*cmd, *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]
