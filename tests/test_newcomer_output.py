"""Issue 27, what a newcomer sees: a run prints only the framework's own lines, and
`keras-largebatch --help` prints the full help of `python -m keras_largebatch.main --help`.

The filter's rules are checked on lines copied from TensorFlow 2.21's start-up
(keras_largebatch/tf_log.py), then through a real file descriptor 2, then in one real
training process started from an empty folder with TF_CPP_MIN_LOG_LEVEL unset.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_largebatch import tf_log
from tests.cli import REPO

NOTICE = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
          "STDERR")
ONEDNN = ("I0000 00:00:1796609386.909906    7794 port.cc:153] oneDNN custom operations are on. "
          "You may see slightly different numerical results due to floating-point round-off "
          "errors from different computation orders.")
NO_DRIVER = ("I0000 00:00:1796609386.910194    7794 cudart_stub.cc:31] Could not find cuda "
             "drivers on your machine, GPU will not be used.")
CPU_GUARD = ("I0000 00:00:1796609337.388883    6190 cpu_feature_guard.cc:227] This TensorFlow "
             "binary is optimized to use available CPU instructions in performance-critical "
             "operations.")
CPU_GUARD_NEXT = ("To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 "
                  "FMA, in other operations, rebuild TensorFlow with the appropriate compiler "
                  "flags.")
CUINIT = ("E0000 00:00:1796609389.877674    7794 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
GENERATOR = ("W0000 00:00:1796609341.239781    6190 dataset.cc:997] Input of "
             "GeneratorDatasetOp::Dataset will not be optimized because the dataset does not "
             "implement the AsGraphDefInternal() method needed to apply optimizations.")
OTHER_ERROR = "E0000 00:00:1796609389.877674    7794 some_op.cc:12] a real error"
PYTHON = "UserWarning: something Python says"


def _kept(lines, level):
    line_filter = tf_log.LineFilter(level)
    return [line for line in lines if line_filter.keep(line)]


def test_level_2_drops_info_warning_and_the_notice_and_keeps_errors_and_python():
    lines = [NOTICE, ONEDNN, NO_DRIVER, CPU_GUARD, CPU_GUARD_NEXT, GENERATOR, OTHER_ERROR, PYTHON]
    assert _kept(lines, 2) == [OTHER_ERROR, PYTHON]


def test_level_1_keeps_warnings_level_3_drops_errors_level_0_keeps_everything():
    lines = [NOTICE, ONEDNN, GENERATOR, OTHER_ERROR, PYTHON]
    assert _kept(lines, 1) == [GENERATOR, OTHER_ERROR, PYTHON]
    assert _kept(lines, 3) == [PYTHON]
    assert _kept(lines, 0) == lines


def test_the_instructions_line_goes_only_with_its_dropped_first_line():
    assert _kept([CPU_GUARD_NEXT, ONEDNN, CPU_GUARD_NEXT], 2) == [CPU_GUARD_NEXT, CPU_GUARD_NEXT]
    assert _kept([CPU_GUARD, PYTHON, CPU_GUARD_NEXT], 2) == [PYTHON, CPU_GUARD_NEXT]


def test_a_failed_cuinit_is_shown_unless_tensorflow_found_no_driver():
    assert _kept([CUINIT], 2) == [CUINIT]  # a driver is there: a real error
    assert _kept([NO_DRIVER, CUINIT, OTHER_ERROR], 2) == [OTHER_ERROR]


def test_descriptor_2_is_filtered_inside_the_block_and_restored_after(capfd):
    with tf_log.filtered_stderr(2):
        os.write(2, f"{NOTICE}\n{ONEDNN}\n{OTHER_ERROR}\n".encode())
        os.write(2, f"{PYTHON}\n".encode())
    os.write(2, f"{ONEDNN}\n".encode())
    assert capfd.readouterr().err.splitlines() == [OTHER_ERROR, PYTHON, ONEDNN]


def test_descriptor_2_is_restored_when_the_block_raises(capfd):
    with pytest.raises(ImportError), tf_log.filtered_stderr(2):
        os.write(2, f"{ONEDNN}\nTraceback: kept\n".encode())
        raise ImportError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err.splitlines() == ["Traceback: kept", "after"]


def test_a_run_from_an_empty_folder_prints_only_its_own_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "keras-largebatch"), "--gin_file=gin/tests/tiny.gin",
         "--gin_bindings=fashion_mnist.max_train_examples = 4000",
         f"--run_dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Epoch 1/1 (global batch 2000, 2 steps)" in proc.stdout
    assert "Final weights sha256: " in proc.stdout
    assert proc.stderr == ""  # no TF start-up, no GeneratorDatasetOp, no gin `Path not found`


def _help(command, tmp_path):
    proc = subprocess.run([*command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr  # absl's status for --help
    program = command[-1] if command[0] != sys.executable else str(
        REPO / "keras_largebatch" / "main.py")
    return proc.stdout.replace(program, "PROGRAM")


def test_the_console_script_prints_the_same_full_help_as_the_module(tmp_path):
    script = _help([str(Path(sys.executable).parent / "keras-largebatch")], tmp_path)
    module = _help([sys.executable, "-m", "keras_largebatch.main"], tmp_path)
    assert script == module
    assert module.startswith("Run one experiment from gin files.")
    for flag in ("--gin_file", "--gin_bindings", "--gin_search_paths", "--run_dir",
                 "--[no]overwrite", "--[no]list_configurables", "--[no]dry_run",
                 "--[no]gin_allow_imports"):
        assert f"  {flag}: " in module
    assert "\nPROGRAM:\n" in module
