"""Bad input around the catalogue (tests/test_cli_errors.py): the flag that lets a trusted gin
file run code, a study file's imports (the sweep CLI, a real process: its flags are not main's),
the label check against NumPy, and a read-only file system (needs root).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from .cli import REPO, TINY, error_lines
from .inprocess import run_main


def test_gin_allow_imports_lets_a_trusted_config_run_code(tmp_path):
    """The import attack with the flag: the module's code runs (the flag means what the README
    says), and the run goes on to use the config."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "evil_module.py").write_text(
        f"open({str(tmp_path / 'IMPORTED')!r}, 'w').write('ran')\n")
    (tmp_path / "imports.gin").write_text("import evil_module\ntrain.epochs = 1\n")
    proc = run_main(*TINY, f"--gin_file={tmp_path / 'imports.gin'}", "--gin_allow_imports",
                    "--dry_run", f"--run_dir={tmp_path / 'run'}",
                    env={"PYTHONPATH": str(tmp_path / "modules")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "IMPORTED").exists()
    assert not (tmp_path / "run").exists()


def test_a_study_file_cannot_import_either(tmp_path):
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "evil_study.py").write_text(
        f"open({str(tmp_path / 'IMPORTED')!r}, 'w').write('ran')\n")
    study = tmp_path / "study.gin"
    study.write_text("import evil_study\nsweep.base_gin_files = ['gin/tests/tiny.gin']\n"
                     "sweep.grid = {'train.seed': [0, 1]}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-m", "keras_largebatch.studies.sweep",
                           f"--gin_file={study}", f"--sweep_dir={tmp_path / 'sweep'}",
                           "--dry_run"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and "'import evil_study'" in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "IMPORTED").exists()
    assert not (tmp_path / "sweep").exists()


def test_labels_are_checked_against_numpy():
    """The label check agrees with a NumPy count on the real files (all in range)."""
    from keras_largebatch.data.sources import check_labels, fashion_mnist

    source = fashion_mnist()
    for split, (_, labels) in (("train", source.train_arrays), ("test", source.test_arrays)):
        assert np.count_nonzero((labels < 0) | (labels > 9)) == 0
        check_labels("fashion_mnist", split, labels, 10)
        with pytest.raises(ValueError, match="labels outside 0..8"):
            check_labels("fashion_mnist", split, labels, 9)


@pytest.mark.needs_root
def test_a_read_only_file_system_is_one_line(tmp_path):
    """--run_dir on a read-only mount (a tmpfs mounted ro here; needs root): one line, exit 2."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        proc = run_main(*TINY, f"--run_dir={mount / 'run'}")
        lines = error_lines(proc)
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert "is not a writable folder" in lines[0] and "Traceback" not in proc.stderr
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)
