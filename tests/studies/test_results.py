"""The results.json schema (keras_largebatch/studies/results.py), sweep.json, run names that
stay inside the sweep folder, and hand-damaged files through the command lines: one `error:`
line and exit status 2, never a traceback."""

import json
import math
import os
import subprocess
import sys

import pytest

from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import grid, manifest
from keras_largebatch.studies import metrics as mx
from keras_largebatch.studies import results as rs

from ..cli import REPO

EPOCH = {"epoch": 1, "train_loss": 0.4, "test_accuracy": 0.8, "batch_size": 10,
         "samples_per_second": 100.0, "epoch_time_s": 1.0}


# ---- results.json --------------------------------------------------------------------------------

def test_the_keys_are_the_ones_the_training_loop_writes(tmp_path):
    """A real (tiny) training run writes every key of the schema: top level and per epoch
    (divergence and interruption keys only appear with those outcomes)."""
    from keras_largebatch.training.loop import train

    from ..training.helpers import fashion_subset

    train(run_dir=str(tmp_path), dataset=fashion_subset(), model_options={"filters": (4, 8)},
          batch_size=512, epochs=1, eval_train_set=True, log_gradient_norm=True, verbose=False)
    written = rs.read_results(str(tmp_path))
    top = [rs.STATUS, rs.EPOCHS, rs.FINAL_TEST_ACCURACY, rs.BEST_TEST_ACCURACY,
           rs.BATCH_SIZE_PER_EPOCH, rs.WALL_TIME_S, rs.WEIGHTS_SHA256, rs.RESTORES]
    per_epoch = [rs.EPOCH, rs.TRAIN_LOSS, rs.TRAIN_ACCURACY, rs.TEST_LOSS, rs.TEST_ACCURACY,
                 rs.LEARNING_RATE, rs.BATCH_SIZE, rs.EFFECTIVE_BATCH_SIZE, rs.REPEATS,
                 rs.GRADIENT_NORM, rs.FULL_TRAIN_LOSS, rs.FULL_TRAIN_ACCURACY,
                 rs.SAMPLES_PER_SECOND, rs.EPOCH_TIME_S]
    assert [k for k in top if k not in written] == []
    assert [k for k in per_epoch if k not in written[rs.EPOCHS][0]] == []
    assert written[rs.STATUS] == rs.COMPLETED and (tmp_path / rs.RESULTS_FILE).is_file()


def test_write_then_read_round_trips_nan_and_leaves_no_temporary_file(tmp_path):
    data = {rs.STATUS: rs.DIVERGED, rs.EPOCHS: [{**EPOCH, "train_loss": math.nan}],
            rs.DIVERGENCE: {"epoch": 1, "step": 3}, rs.DIVERGED_EPOCH: 1}
    path = rs.write_results(str(tmp_path), data)
    assert path == str(tmp_path / "results.json") and os.listdir(tmp_path) == ["results.json"]
    back = rs.read_results(str(tmp_path))
    assert back[rs.STATUS] == "diverged" and math.isnan(back[rs.EPOCHS][0]["train_loss"])
    assert rs.read_results(path) == back  # the file itself works as well as its folder
    assert rs.is_finished(str(tmp_path))


@pytest.mark.parametrize("text", [None, "", '{"status": "compl', "[1, 2]", '"completed"'])
def test_missing_half_written_or_non_object_results_read_as_none(tmp_path, text):
    if text is not None:
        (tmp_path / "results.json").write_text(text)
    assert rs.read_results(str(tmp_path)) is None
    assert not rs.is_finished(str(tmp_path))


@pytest.mark.parametrize("data, message", [
    ({"status": "completed", "epochs": 5}, "epochs=5 is not a list"),
    ({"status": "completed", "epochs": [{"epoch": "one"}]}, r"epochs\[0\].epoch='one' is not"),
    ({"status": "diverged", "epochs": [], "diverged_epoch": 1.5}, "diverged_epoch=1.5 is not"),
    ({"status": "diverged", "epochs": [], "divergence": "epoch 3"}, "divergence='epoch 3' is"),
    ({"status": "diverged", "epochs": [], "divergence": {"epoch": None, "x": 1}}, None),
])
def test_damaged_fields_are_one_line_errors(tmp_path, data, message):
    (tmp_path / "results.json").write_text(json.dumps(data))
    if message is None:  # a field the studies do not compute with: read as is
        assert rs.read_results(str(tmp_path)) == data
        return
    with pytest.raises(UserInputError, match=message) as info:
        rs.read_results(str(tmp_path))
    assert "\n" not in str(info.value) and str(tmp_path / "results.json") in str(info.value)


def test_numbers_and_finite_values():
    assert rs.number("2.5") == 2.5 and rs.number(None) is None and rs.number([1]) is None
    assert rs.finite([1, None, "x", math.nan, math.inf, "3"]) == [1.0, 3.0]


def test_diverged_epoch_reads_what_the_loop_writes():
    epochs = [{**EPOCH, "epoch": e} for e in (1, 2, 3)]
    m = mx.run_metrics({"status": "diverged", "epochs": epochs, "diverged_epoch": 2,
                        "divergence": {"epoch": 2, "step": 7}})
    assert m["diverged_epoch"] == 2
    # keys no writer uses are not read: the last epoch stands
    m = mx.run_metrics({"status": "diverged", "epochs": epochs, "divergence_epoch": 1,
                        "diverged_at_epoch": 1})
    assert m["diverged_epoch"] == 3
    # an epoch record without a batch size has no time per update (it used to raise)
    assert mx.run_metrics({"status": "completed", "epochs": [
        {k: v for k, v in EPOCH.items() if k != "batch_size"}]})["update_time_ms"] is None


# ---- Run folders stay inside the sweep folder ---------------------------------------------------

@pytest.mark.parametrize("variants, message", [
    ({"..": []}, "starts with '.'"),
    ({".": []}, "starts with '.'"),
    ({"../x": []}, "must use only letters"),
    ({"a/b": []}, "must use only letters"),
    ({"logs": []}, "not a run folder of the sweep"),
])
def test_a_variant_cannot_name_a_folder_outside_the_sweep(variants, message):
    with pytest.raises(UserInputError, match=message) as info:
        grid.sweep(variants=variants)
    assert "\n" not in str(info.value)


def test_a_variant_named_dots_with_a_grid_is_refused_too():
    with pytest.raises(UserInputError, match="starts with '.'"):
        grid.sweep(variants={"..": []}, grid={"x.y": [1]})


def test_the_loss_bound_is_a_positive_number():
    with pytest.raises(UserInputError, match="sweep.loss_upper_bound=-1.0 must be a finite"):
        grid.sweep(grid={"x.y": [1]}, loss_upper_bound=-1.0)
    assert grid.sweep(grid={"x.y": [1]}, loss_upper_bound=100).loss_upper_bound == 100.0


@pytest.mark.parametrize("text, message", [
    ("{not json", "is damaged"),
    ("[]", "holds list, not an object"),
    ('{"runs": {"a": 1}}', "'runs' is not an object"),
    ('{"order": ["../../etc"]}', "names a run '../../etc'"),
    ('{"loss_upper_bound": "high"}', "'loss_upper_bound'='high' is not a number"),
])
def test_a_damaged_sweep_json_is_refused(tmp_path, text, message):
    (tmp_path / manifest.SWEEP_FILE).write_text(text)
    with pytest.raises(UserInputError, match=message):
        manifest.read_manifest(str(tmp_path))
    assert manifest.read_manifest(str(tmp_path / "none")) == {}


# ---- Through the command lines ------------------------------------------------------------------

def _cli(module, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)


def _one_error(proc, *contains):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for text in contains:
        assert text in errors[0]
    return errors[0]


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.gin"
    path.write_text("sweep.base_gin_files = ['gin/tests/tiny.gin']\n"
                    "sweep.grid = {'train.learning_rate': [0.1]}\n")
    return path


def test_sweep_cli_refuses_a_damaged_sweep_json(tmp_path, study):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text('{"runs": {"learning_rate=0.1": ')
    proc = _cli("keras_largebatch.studies.sweep", f"--gin_file={study}", f"--sweep_dir={out}",
                "--noplot")
    _one_error(proc, str(out / "sweep.json"), "is damaged", "delete it")
    assert not (out / "learning_rate=0.1").exists()  # nothing was launched


def test_sweep_cli_refuses_a_damaged_results_json(tmp_path, study):
    out = tmp_path / "out"
    (out / "learning_rate=0.1").mkdir(parents=True)
    (out / "learning_rate=0.1" / "results.json").write_text(
        json.dumps({"status": "completed", "epochs": [{"epoch": "first"}]}))
    proc = _cli("keras_largebatch.studies.sweep", f"--gin_file={study}", f"--sweep_dir={out}",
                "--noplot")
    _one_error(proc, "results.json: epochs[0].epoch='first' is not a whole number")
    assert not (out / "logs" / "learning_rate=0.1.log").exists()


def test_sweep_cli_refuses_a_variant_outside_the_sweep_folder(tmp_path):
    path = tmp_path / "study.gin"
    path.write_text("sweep.variants = {'..': []}\n")
    proc = _cli("keras_largebatch.studies.sweep", f"--gin_file={path}",
                f"--sweep_dir={tmp_path / 'out'}", "--noplot")
    _one_error(proc, "sweep.variants name '..'")
    assert sorted(os.listdir(tmp_path)) == ["study.gin"]


def test_sweep_cli_refuses_a_string_where_a_list_belongs(tmp_path):
    path = tmp_path / "study.gin"
    path.write_text("sweep.base_gin_files = 'gin/tests/tiny.gin'\n"
                    "sweep.grid = {'train.learning_rate': [0.1]}\n")
    proc = _cli("keras_largebatch.studies.sweep", f"--gin_file={path}",
                f"--sweep_dir={tmp_path / 'out'}", "--noplot")
    _one_error(proc, "sweep.base_gin_files must be a list of strings")
    assert sorted(os.listdir(tmp_path)) == ["study.gin"]


def test_sweep_cli_refuses_parallel_zero(tmp_path, study):
    proc = _cli("keras_largebatch.studies.sweep", f"--gin_file={study}",
                f"--sweep_dir={tmp_path / 'out'}", "--parallel=0")
    _one_error(proc, "--parallel=0 must be >= 1")


def test_plot_cli_refuses_a_damaged_results_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"status": "completed", "epochs": 3}))
    proc = _cli("keras_largebatch.studies.plot", str(run), "--notensorboard")
    _one_error(proc, "epochs=3 is not a list")


def test_the_old_command_names_still_work(tmp_path, study):
    proc = _cli("keras_largebatch.sweep", f"--gin_file={study}", "--dry_run",
                f"--sweep_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    assert "-m keras_largebatch.main" in proc.stdout and "learning_rate=0.1" in proc.stdout
    proc = _cli("keras_largebatch.plot", str(tmp_path / "nope"))
    _one_error(proc, "is not a folder")
