"""The run directory: one folder per run (config.gin, TensorBoard events, checkpoints,
results.json). Rerunning the same command with the same --run_dir resumes; a run_dir that
holds a run of a different config is refused rather than silently mixed."""

from __future__ import annotations

import difflib
import os
import shutil

from keras_largebatch import files
from keras_largebatch.errors import UserInputError

CONFIG_FILE = "config.gin"
HISTORY_FILE = "history.json"


def check_compatible(run_dir: str, config_text: str, *, overwrite: bool) -> None:
    """Raise (without writing anything) if `run_dir` holds a run of a different config."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if overwrite or not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = "is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else f"({e.strerror})"
        raise UserInputError(
            f"{path} {why}, so this run cannot be checked against it; move it away, or pass "
            f"--overwrite to start the run afresh") from None
    if old.strip() == config_text.strip():
        return
    changed = [
        line[1:].strip()
        for line in difflib.unified_diff(old.splitlines(), config_text.splitlines(), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
    ]
    first = changed[0] if changed else "?"
    raise UserInputError(
        f"--run_dir {run_dir} holds a run with a different config (differs at "
        f"{first!r}); use a new --run_dir or pass --overwrite to start it afresh"
    )


def prepare(run_dir: str, config_text: str, *, overwrite: bool) -> None:
    """Create (or wipe, with overwrite) the run directory and write config.gin."""
    if overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    files.write_text_atomic(os.path.join(run_dir, CONFIG_FILE), config_text)


def check_usable(run_dir: str) -> None:
    """Raise (writing nothing) if `run_dir` cannot hold a run: a file where the folder should
    be, an unwritable or read-only parent, or run files of the wrong kind inside it."""
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        raise UserInputError(f"--run_dir {run_dir} exists and is not a folder; choose a folder "
                             f"path for the run")
    parent = os.path.abspath(run_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"cannot write --run_dir {run_dir}: {parent} is not a writable "
                             f"folder (read-only file system or permissions); choose another "
                             f"--run_dir")
    for name, want_dir in ((CONFIG_FILE, False), ("checkpoints", True)):
        path = os.path.join(run_dir, name)
        if os.path.lexists(path) and os.path.isdir(path) != want_dir:
            kind = "a folder" if want_dir else "a file"
            raise UserInputError(f"{path} should be {kind} of a run; move it away, or pass "
                                 f"--overwrite to start the run afresh")
