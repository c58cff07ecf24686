"""Issue 27: `import keras_largebatch` and the studies' JSON-only command lines import neither
Keras nor TensorFlow; BAModel's old home still works, with a DeprecationWarning.

Each check that needs an interpreter without Keras runs in a fresh process (this test session
has TensorFlow loaded); what it imported is reported from an atexit hook, after the command
line's own `sys.exit`.
"""

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

from tests.cli import REPO

HEAVY = ("tensorflow", "keras", "jax", "torch")
# Runs a module as `python -m` does, then prints the heavy modules it imported.
PROBE = textwrap.dedent("""
    import atexit, runpy, sys
    atexit.register(lambda: print("heavy:" + ",".join(
        m for m in {heavy!r} if m in sys.modules), file=sys.stderr))
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""").format(heavy=HEAVY)
LIGHT_MODULES = ["keras_largebatch", "keras_largebatch.errors", "keras_largebatch.files",
                 "keras_largebatch.validate", "keras_largebatch.cli_flags",
                 "keras_largebatch.configs", "keras_largebatch.gin_policy",
                 "keras_largebatch.allocator", "keras_largebatch.studies.results",
                 "keras_largebatch.studies.manifest", "keras_largebatch.studies.metrics",
                 "keras_largebatch.studies.seeds", "keras_largebatch.studies.grid",
                 "keras_largebatch.studies.summary", "keras_largebatch.studies.figures",
                 "keras_largebatch.studies.run_data", "keras_largebatch.studies.plot",
                 "keras_largebatch.studies.batch_growth", "keras_largebatch.studies.sweep",
                 "keras_largebatch.goodput", "keras_largebatch.goodput.throughput"]


def _heavy(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.startswith("heavy:")]
    assert len(lines) == 1, stderr[-3000:]
    return [m for m in lines[0][len("heavy:"):].split(",") if m]


def test_the_package_and_the_studies_modules_import_no_keras():
    code = (f"import importlib, sys\nfor m in {LIGHT_MODULES!r}: importlib.import_module(m)\n"
            f"print('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), "
            f"file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _heavy(proc.stderr) == []


def _results_only_run(run_dir):
    """A run folder with results.json and config.gin only (no TensorBoard events)."""
    run_dir.mkdir(parents=True)
    epochs = [{"epoch": i + 1, "test_accuracy": 0.5 + 0.1 * i, "train_loss": 1.0 / (i + 1),
               "train_accuracy": 0.5, "test_loss": 1.0, "learning_rate": 0.1,
               "batch_size": 32, "effective_batch_size": 32, "samples_per_second": 1000.0,
               "epoch_time_s": 0.3} for i in range(3)]
    (run_dir / "results.json").write_text(json.dumps({"status": "completed", "epochs": epochs}))
    (run_dir / "config.gin").write_text("train.batch_size = 32\n")
    return run_dir


@pytest.mark.parametrize("command, status, expect", [
    (["keras_largebatch.studies.sweep", "--gin_file=gin/studies/lars.gin", "--dry_run",
      "--sweep_dir={tmp}/sweep"], 0, "--run_dir={tmp}/sweep/lars_2048_lr10"),
    (["keras_largebatch.studies.plot", "{tmp}/run", "--notensorboard"], 0, "test_error.png"),
    (["keras_largebatch.studies.batch_growth", "{tmp}/absent"], 2,
     "error: expected one sweep folder"),
])
def test_studies_command_lines_that_read_json_import_no_keras(tmp_path, command, status,
                                                              expect):
    _results_only_run(tmp_path / "run")
    args = [a.format(tmp=tmp_path) for a in command]
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == status, proc.stderr[-3000:]
    assert expect.format(tmp=tmp_path) in proc.stdout + proc.stderr
    assert _heavy(proc.stderr) == []


def test_subpackages_load_on_first_attribute_use():
    import keras_largebatch

    assert keras_largebatch.optimizers is importlib.import_module("keras_largebatch.optimizers")
    assert keras_largebatch.schedules.AdaBatch.__name__ == "AdaBatch"
    assert {"layers", "optimizers", "studies"} <= set(dir(keras_largebatch))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        keras_largebatch.nothing  # noqa: B018


def test_bamodel_old_names_warn_and_are_the_new_ones():
    from keras_largebatch import optimizers
    from keras_largebatch.training import steps

    for name in ("BAModel", "BATrainStep", "ba_chunk_step"):
        with pytest.warns(DeprecationWarning, match=f"keras_largebatch.optimizers.{name}.*") as w:
            old = getattr(steps, name)
        assert old is getattr(optimizers, name)
        assert "removed in keras_largebatch 0.2.0" in str(w[0].message)
        assert w[0].filename == __file__  # attributed to the caller, not to the package
    sys.modules.pop("keras_largebatch.training.steps.ba_model", None)
    with pytest.warns(DeprecationWarning, match="removed in keras_largebatch 0.2.0"):
        from keras_largebatch.training.steps.ba_model import BAModel
    assert BAModel is optimizers.BAModel


@pytest.mark.parametrize("old", ["keras_largebatch.plot", "keras_largebatch.sweep"])
def test_old_command_modules_warn_with_their_removal(old):
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=r"removed in keras_largebatch 0\.2\.0.*studies"):
        importlib.import_module(old)
