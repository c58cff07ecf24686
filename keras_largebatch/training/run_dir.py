"""The run directory: one folder per run, and what may be done to it.

    <run_dir>/.keras_largebatch_run   marker (JSON) written when the run dir is created
    <run_dir>/config.gin  tensorboard/  checkpoints/  history.json  results.json  model.keras

Rerunning the same command with the same --run_dir resumes; a run_dir that holds a run of a
different config is refused rather than silently mixed. The machine's bindings
(`make_strategy.*`: replicas, timeouts) are not part of a run's identity, so a run continues
on another replica or worker count (`run_identity`). The rules that keep a user's data:

- `--overwrite` removes only what a run writes (the names above and temporary `.tmp-*` files);
  anything else in the folder stays. It refuses, before anything is touched, the root folder,
  a home folder, the current folder (or one above it), and a folder that is not a run.
- A run is recognised by its marker, or (runs made before the marker existed) by config.gin
  next to checkpoints/ or results.json, or by config.gin with nothing but run files beside it.
- A non-empty folder that is not a run is refused with or without `--overwrite`: a run would
  otherwise write its config.gin, results.json and model.keras among the user's own files.
- A --run_dir that is a symbolic link is refused (with or without `--overwrite`): pass the
  folder it points to, so what is written or removed is never in doubt.
- A --run_dir that is a file, not a folder, is refused.
"""

from __future__ import annotations

import difflib
import os
import pwd
import shutil
import time

from keras_largebatch import files
from keras_largebatch.errors import UserInputError

CONFIG_FILE = "config.gin"
HISTORY_FILE = "history.json"
MARKER_FILE = ".keras_largebatch_run"
TMP_PREFIX = ".tmp-"  # files.py's temporary files, checkpoint.py's model export
RUN_FILES = (CONFIG_FILE, HISTORY_FILE, "results.json", "model.keras", MARKER_FILE)
RUN_FOLDERS = ("tensorboard", "checkpoints")


def is_run_entry(name: str) -> bool:
    """True for a name a run writes directly inside its run dir."""
    return name in RUN_FILES or name in RUN_FOLDERS or name.startswith(TMP_PREFIX)


def is_run(path: str) -> bool:
    """True if folder `path` holds a run of this framework (see the module docstring)."""
    names = set(os.listdir(path))
    if MARKER_FILE in names:
        return True
    if CONFIG_FILE not in names:
        return False
    return ("checkpoints" in names or "results.json" in names
            or all(is_run_entry(n) for n in names))


def _home_folders() -> set[str]:
    homes = {os.path.expanduser("~")}
    try:
        homes.update(entry.pw_dir for entry in pwd.getpwall())
    except OSError:  # no user database: $HOME is still checked
        pass
    return {os.path.realpath(h) for h in homes if h}


def check_target(run_dir: str, *, overwrite: bool) -> None:
    """Raise (reading only) if `run_dir` is a place a run must not write to or clear."""
    path = os.path.normpath(run_dir)
    if os.path.islink(path):
        raise UserInputError(
            f"--run_dir {run_dir} is a symbolic link (to {os.readlink(path)}); pass the folder "
            f"it points to, --run_dir={os.path.realpath(path)}, instead")
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path):
        raise UserInputError(f"--run_dir {run_dir} is a file, not a folder; choose a new "
                             f"folder for the run")
    if overwrite:
        real, cwd = os.path.realpath(path), os.path.realpath(os.getcwd())
        place = ("the root folder" if real == os.path.realpath(os.sep) else
                 "a home folder" if real in _home_folders() else
                 "the current folder" if real == cwd else
                 "a folder above the current one" if cwd.startswith(real + os.sep) else None)
        if place:
            raise UserInputError(
                f"--run_dir {run_dir} is {place}; --overwrite never clears it: pass the run's "
                f"own folder (e.g. runs/<name>) instead")
    if not is_run(path):
        others = sorted(n for n in os.listdir(path) if not is_run_entry(n))
        if others:
            what = "--overwrite only clears runs: " if overwrite else ""
            raise UserInputError(
                f"--run_dir {run_dir} holds files that are not a keras_largebatch run (e.g. "
                f"{others[0]!r}); {what}choose a new or empty folder for the run")


# Bindings of the machine a run happens to use, not of the run: a checkpoint continues on
# another replica or worker count (the global batch, the input position and every schedule are
# defined independently of it; floating-point sums are not, so bitwise equality holds only on
# the same count). Under TF_CONFIG the worker count is not a binding at all.
MACHINE_BINDINGS = ("make_strategy.",)


def run_identity(config_text: str) -> list[str]:
    """The lines of a gin config that make a run what it is: bindings and includes, without
    comments, blank lines and the machine's bindings (MACHINE_BINDINGS)."""
    lines = []
    for line in config_text.splitlines():
        text = line.strip()
        if text and not text.startswith("#") and not text.startswith(MACHINE_BINDINGS):
            lines.append(line.rstrip())
    return lines


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
    old_identity, new_identity = run_identity(old), run_identity(config_text)
    if old_identity == new_identity:
        return
    changed = [
        line[1:].strip()
        for line in difflib.unified_diff(old_identity, new_identity, n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
    ]
    first = changed[0] if changed else "?"
    raise UserInputError(
        f"--run_dir {run_dir} holds a run with a different config (differs at "
        f"{first!r}); use a new --run_dir or pass --overwrite to start it afresh"
    )


def clear(run_dir: str) -> None:
    """Remove what a run writes from `run_dir` (never follows a link; other files stay)."""
    for name in sorted(os.listdir(run_dir)):
        if not is_run_entry(name):
            continue
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def prepare(run_dir: str, config_text: str, *, overwrite: bool) -> None:
    """Create the run directory (clearing its run files with overwrite), the marker and
    config.gin. Call only after `check_target` and every other check passed."""
    if overwrite and os.path.isdir(run_dir):
        clear(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    marker = os.path.join(run_dir, MARKER_FILE)
    if not os.path.exists(marker):  # written first: a half-made run dir is still a run
        files.write_json_atomic(marker, {"keras_largebatch_run": 1,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
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
