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
            script: str | None = None, faults: list[str] | tuple = (), cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run `python -m keras_largebatch.main ARGS` (or a console script) from the repo root.

    `faults`: e.g. ["kill_at_step=25"], injected by tests/faults.py. `cwd`: run from another
    folder (this checkout stays first on the import path; pass gin files by absolute path)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    if cwd is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [full_env.get("PYTHONPATH")])])
    cmd = [script] if script else cli_command(faults)
    return subprocess.run([*cmd, *args], cwd=cwd or REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def assert_one_error_line(module: str, args, message: str) -> None:
    """`python -m module ARGS` from the repo root exits 2 with one `error:` line holding
    `message` and no traceback (the project's rule for bad input)."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = error_lines(proc)
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def tree_state(path: Path, *, skip_content: str = "") -> dict[str, str]:
    """Every entry under `path` (links not followed) -> sha256 of a file's bytes, "dir", or
    "link -> target": equal dicts mean byte-identical trees. Files whose relative path starts
    with `skip_content` are listed by name only (a live process may append to them)."""
    import hashlib

    state = {}
    for entry in sorted(path.rglob("*")):
        rel = str(entry.relative_to(path))
        if entry.is_symlink():
            state[rel] = f"link -> {os.readlink(entry)}"
        elif entry.is_dir():
            state[rel] = "dir"
        elif skip_content and rel.startswith(skip_content):
            state[rel] = "file"
        else:
            state[rel] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return state
