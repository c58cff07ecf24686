"""A full disk during a checkpoint save, for real: a 3 MiB tmpfs holds the first checkpoint
(~1.6 MiB: a dense layer of 256 units, momentum slots) but not a second one beside it. The run
ends with one line naming the path, exit status 4 and no traceback; the first checkpoint is
intact, and once space is freed (the tmpfs grown) the same command resumes from it and finishes.

Needs root (mount); skipped with the reason otherwise. What is mounted is always unmounted.
The full run is a real process (the suite's exit-status-4 contract); the resume runs in-process
(tests/inprocess.py).
"""

import json
import subprocess

import pytest

from keras_largebatch.training import checkpoint_files as cf

from ..cli import TINY, error_lines, run_cli
from ..inprocess import run_main

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]  # a 200k-parameter model, twice

B = "--gin_bindings="
CONFIG = [*TINY, B + "fashion_mnist.max_train_examples = 6000",
          B + "fashion_mnist.max_test_examples = 1000", B + "train.batch_size = 500",
          B + "train.checkpoint_every_steps = 4", B + "cnn_fashion.dense_units = 256"]


def _mount(path, size: str) -> None:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")


def test_full_disk_during_a_save_is_one_line_exit_4_and_resumable(tmp_path):
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    _mount(mnt, "3M")
    try:
        run_dir = mnt / "run"
        full = run_cli(*CONFIG, f"--run_dir={run_dir}")
        assert full.returncode == 4, (full.returncode, full.stderr[-3000:])
        assert "Traceback" not in full.stderr, full.stderr[-3000:]
        lines = error_lines(full)
        assert lines == [f"error: no space left on device writing {run_dir}/checkpoints/ckpt-8; "
                         f"free space and rerun the same command to resume"], full.stderr[-3000:]
        ckpt = str(run_dir / "checkpoints")
        assert cf.numbers(ckpt) == [4] and cf.damage(cf.prefix(ckpt, 4)) is None
        assert not (run_dir / "checkpoints" / "ckpt-8_temp").exists()  # its space given back

        subprocess.run(["mount", "-o", "remount,size=64M", str(mnt)], check=True)  # space freed
        again = run_main(*CONFIG, f"--run_dir={run_dir}")
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"from {run_dir}/checkpoints/ckpt-4\n" in again.stdout, again.stdout[-2000:]
        assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
        assert (run_dir / "model.keras").stat().st_size > 800_000  # 205k float32 weights
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
