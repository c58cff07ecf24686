"""--run_dir safety through the CLI's entry point: --overwrite removes only what a run writes and
refuses a user's own folder, a symbolic link, the current folder, a home folder and /; two
processes never share a run dir (the second is refused, naming the first's PID), and the lock of
a killed run does not block its rerun. Refusals: exit 2, exactly one `error:` line, no
traceback, and every file of the run dir and of the user's folder byte-identical afterwards.

The refusals and reruns run in-process (tests/inprocess.py); the run that holds the lock is a
real process, since what is checked is another process's lock.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from .cli import REPO, TINY, cli_command, error_lines, tree_state
from .inprocess import run_main
from .waiting import wait_until

B = "--gin_bindings="
CONFIG = [*TINY, B + "fashion_mnist.max_train_examples = 6000",
          B + "fashion_mnist.max_test_examples = 1000", B + "train.batch_size = 500",
          B + "train.checkpoint_every_steps = 4"]  # 12 updates; ckpt-4, -8, -12
ABS_CONFIG = [f"--gin_file={REPO / 'gin/tests/tiny.gin'}", *CONFIG[1:]]
USER_FILES = {"thesis.tex": b"my thesis\n", "data/raw.csv": b"1,2,3\n",
              "notes.md": b"# notes\n"}


def _user_folder(path: Path) -> Path:
    for name, data in USER_FILES.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def _old_run(path: Path, *, extra_user_files: bool = False) -> Path:
    """A run dir as runs made before the marker look (config.gin + checkpoints/ + results)."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "tensorboard").mkdir()
    (path / "config.gin").write_text("train.epochs = 99\n")
    (path / "checkpoints" / "ckpt-1.index").write_bytes(b"old checkpoint")
    (path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old events")
    (path / "results.json").write_text('{"status": "completed"}\n')
    (path / "history.json").write_text("[]\n")
    (path / "model.keras").write_bytes(b"old model")
    (path / ".tmp-abc123").write_bytes(b"half-written")
    if extra_user_files:
        _user_folder(path)
    return path


# name: (run_dir relative to tmp ("/" = the root folder), extra args, env, cwd, error text)
REFUSED = {
    "overwrite_user_folder": ("user", ["--overwrite"], None, None,
                              "holds files that are not a keras_largebatch run"),
    "user_folder": ("user", [], None, None, "holds files that are not a keras_largebatch run"),
    "symlink_overwrite": ("link", ["--overwrite"], None, None, "is a symbolic link"),
    "symlink": ("link", [], None, None, "is a symbolic link"),
    "a_file": ("user/notes.md", [], None, None, "is a file, not a folder"),
    "current_folder": (".", ["--overwrite"], None, "cwd_run", "is the current folder"),
    "home_folder": ("home_run", ["--overwrite"], {"HOME": "{tmp}/home_run",
                                                  "MPLCONFIGDIR": "{tmp}/caches/mpl",
                                                  "XDG_CACHE_HOME": "{tmp}/caches",
                                                  "XDG_CONFIG_HOME": "{tmp}/caches",
                                                  "KERAS_HOME": "{tmp}/caches/keras"}, None,
                    "is a home folder"),  # (caches of imported libraries kept out of $HOME)
    "root_folder": ("/", ["--overwrite"], None, None, "is the root folder"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_dir_safety")
    _user_folder(tmp / "user")
    _old_run(tmp / "linked_run")
    (tmp / "link").symlink_to(tmp / "linked_run", target_is_directory=True)
    _old_run(tmp / "cwd_run")
    _old_run(tmp / "home_run")
    _old_run(tmp / "overwritten", extra_user_files=True)
    watched = ("user", "linked_run", "cwd_run", "home_run")
    before = {name: tree_state(tmp / name) for name in watched}

    def refused(name):
        where, extra, env, cwd, _ = REFUSED[name]
        run_dir = where if where in ("/", ".") else str(tmp / where)
        env = {k: v.format(tmp=tmp) for k, v in (env or {}).items()}
        return run_main(*(ABS_CONFIG if cwd else CONFIG), *extra, f"--run_dir={run_dir}",
                        env=env, cwd=tmp / cwd if cwd else None)

    procs = {name: refused(name) for name in REFUSED}
    procs["overwrite_run"] = run_main(*CONFIG, "--overwrite", f"--run_dir={tmp / 'overwritten'}")
    after = {name: tree_state(tmp / name) for name in watched}
    return tmp, procs, before, after


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_run_dir_is_one_line_and_untouched(outcomes, name):
    tmp, procs, before, after = outcomes
    proc = procs[name]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-2000:]
    assert REFUSED[name][4] in lines[0], lines[0]
    for folder in before:
        assert after[folder] == before[folder], folder  # the user's files, byte for byte
    assert (tmp / "link").is_symlink()
    assert not os.path.lexists("/.keras_largebatch_run") and not os.path.lexists("/config.gin")


def test_overwrite_removes_only_what_a_run_writes(outcomes):
    tmp, procs, _, _ = outcomes
    proc, run_dir = procs["overwrite_run"], tmp / "overwritten"
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, data in USER_FILES.items():
        assert (run_dir / name).read_bytes() == data  # the user's files in the run dir survive
    assert not (run_dir / ".tmp-abc123").exists()
    assert not (run_dir / "checkpoints" / "ckpt-1.index").exists()
    assert not (run_dir / "tensorboard" / "events.out.tfevents.1").exists()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    assert (run_dir / "model.keras").read_bytes() != b"old model"
    assert json.loads((run_dir / ".keras_largebatch_run").read_text())["keras_largebatch_run"] == 1


def test_second_process_on_a_run_dir_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    run_dir, flag = tmp_path / "run", tmp_path / "holding"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    first = subprocess.Popen(
        [*cli_command([f"hold_at_step=6:{flag}"]), *CONFIG, f"--run_dir={run_dir}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: flag.exists() or first.poll() is not None, timeout=300,
                   what="the first run to reach update 6")
        assert flag.exists(), first.communicate(timeout=60)
        before = tree_state(run_dir, skip_content="tensorboard/")  # events may still flush
        second = run_main(*CONFIG, f"--run_dir={run_dir}")  # this process: another PID
        assert tree_state(run_dir, skip_content="tensorboard/") == before
        assert second.returncode == 2, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        lines = error_lines(second)
        assert len(lines) == 1, second.stderr[-2000:]
        assert f"--run_dir {run_dir} is in use by process {first.pid}" in lines[0], lines[0]
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert (run_dir / "checkpoints" / "ckpt-4.index").exists()
    rerun = run_main(*CONFIG, f"--run_dir={run_dir}")  # the killed holder's lock is gone
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Resuming" in rerun.stdout and "ckpt-4" in rerun.stdout, rerun.stdout[-1500:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
