"""Issue 27: the wheel carries the gin configs, and an installed wheel runs the README's
experiment command from an empty folder.

    pip wheel --no-deps .                     # from a copy of the checkout's files
    python -m venv --without-pip fresh && pip --python fresh/bin/python install --no-deps *.whl
    cd empty && fresh/bin/python -m keras_largebatch.main \\
        --gin_file=gin/experiments/lars_fashion_mnist.gin --gin_bindings='train.epochs = 3' \\
        --run_dir=runs/my_run --dry_run

The fresh environment sees the project's dependencies through a `.pth` file naming this
venv's site-packages (a path line: the editable install's own `.pth` there is not run, so
keras_largebatch comes from the wheel alone). The reference for what the wheel must carry is
the checkout's gin/ folder; the command must exit 0 with nothing at all on stderr: no gin
`Path not found` line, no TensorFlow start-up line (keras_largebatch/tf_log.py).
"""

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.cli import REPO

README_COMMAND = ["-m", "keras_largebatch.main",
                  "--gin_file=gin/experiments/lars_fashion_mnist.gin",
                  "--gin_bindings=train.epochs = 3", "--run_dir=runs/my_run", "--dry_run"]


def _checkout_files() -> list[str]:
    """Tracked files and new ones not ignored: what a clone of this working tree holds."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (REPO / f).is_file()]


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_installed_wheel_runs_the_readme_experiment_from_an_empty_folder(tmp_path):
    files = _checkout_files()
    source = tmp_path / "source"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
          str(source)])
    (wheel,) = (tmp_path / "dist").glob("keras_largebatch-*.whl")

    configs = sorted(f for f in files if f.startswith("gin/") and f.endswith(".gin"))
    assert "gin/experiments/lars_fashion_mnist.gin" in configs
    shipped = sorted(n[len("keras_largebatch/"):] for n in zipfile.ZipFile(wheel).namelist()
                     if n.startswith("keras_largebatch/gin/"))
    assert shipped == configs

    fresh = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(fresh)])
    python = fresh / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
          str(wheel)])
    fresh_site = _run([str(python), "-c",
                       "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    deps = [p for p in {sysconfig.get_path("purelib"), *site.getsitepackages()}
            if os.path.isdir(p)]
    Path(fresh_site, "project_dependencies.pth").write_text("\n".join(deps) + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    where = _run([str(python), "-c", "import keras_largebatch.configs as c; print(c.root())"],
                 cwd=empty, env=env).stdout.strip()
    assert Path(where) == Path(fresh_site) / "keras_largebatch"  # the wheel, not the checkout

    proc = subprocess.run([str(python), *README_COMMAND], cwd=empty, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'status': 'dry_run'" in proc.stdout and "'model': 'alexnet_reduced'" in proc.stdout
    assert proc.stderr == "", proc.stderr[-3000:]  # no gin `Path not found`, no TF start-up
    assert list(empty.iterdir()) == []  # a dry run writes nothing
