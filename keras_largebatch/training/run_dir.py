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
    with open(path) as f:
        old = f.read()
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
