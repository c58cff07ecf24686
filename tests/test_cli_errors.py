"""Bad input, catalogued: every case through the CLI's own entry point (tests/inprocess.py: the
console script's `app.run(main, flags_parser=cli_flags.parse)` in this process).

Bad flags, unknown names, malformed gin text and files, gin files that would run code, Keras'
own optimizer arguments, every `train.*` number, booleans given as strings, unusable run
directories, existing runs with another config or unrestorable checkpoints, missing or damaged
data, malformed TF_CONFIG. Each case asserts: exit status 2, exactly one `error:` line on stderr
naming the value, no traceback, nothing after the error line; no run dir written (or, for an
existing run, `--overwrite` named in the line); and every file under the test's folder byte-for-
byte as before. tests/test_cli.py runs one case as a real process too and compares.
"""

import gzip
import json
import shutil
from pathlib import Path

import pytest

from keras_largebatch.data.sources import FASHION_MNIST_DIR

from .cli import TINY, error_lines, tree_state
from .inprocess import run_main

B = "--gin_bindings="
ATTACK = """from __gin__ import dynamic_registration
import os
os.system.command = 'touch {tmp}/PWNED'
train.learning_rate = @os.system()
"""
CASES = {
    # name: (extra CLI args, text the single error line must contain)
    "unknown_flag": (["--epochz=3"], "Unknown command line flag 'epochz'"),
    "bool_flag_value": (["--overwrite=maybe"], "--overwrite=maybe"),
    "unknown_binding": ([B + "train.epochz = 3"], "epochz"),
    "unknown_configurable": ([B + "trian.epochs = 3"], "trian"),
    "malformed_gin": ([B + "train.epochs = (3"], "bad gin config"),
    "malformed_gin_file": (["--gin_file={tmp}/bad.gin"], "(bad.gin, line 2)"),
    "gin_dynamic_registration": (["--gin_file={tmp}/attack.gin", "--dry_run"],
                                 "'from __gin__ import dynamic_registration' in attack.gin, "
                                 "line 1"),
    "gin_import_side_effects": (["--gin_file={tmp}/imports.gin"], "'import evil_module'"),
    "gin_import_in_bindings": ([B + "import os"], "--gin_allow_imports"),
    "wrong_type": ([B + "train.epochs = 'three'"], "train.epochs must be a positive int; "
                   "got 'three'"),
    "unknown_dataset": ([B + "train.dataset = 'cifar11'"], "unknown dataset 'cifar11'"),
    "unknown_model": ([B + "train.model = 'resnet9'"], "unknown model 'resnet9'"),
    "unknown_optimizer": ([B + "train.optimizer = 'sgdd'"], "unknown optimizer 'sgdd'"),
    "unknown_policy": ([B + "train.augment = 'nope'"], "unknown augmentation policy 'nope'"),
    "unknown_on_divergence": ([B + "train.on_divergence = 'retry'"],
                              "train.on_divergence must be 'stop' or 'restore'; got 'retry'"),
    "batch_not_divisible": ([B + "make_strategy.num_cpu_replicas = 2",
                             B + "train.batch_size = 255"],
                            "255 is not divisible by the 2 replicas"),
    "batch_too_large": ([B + "fashion_mnist.max_train_examples = 1000",
                         B + "train.batch_size = 2000"], "larger than the training set (1000"),
    "zero_epochs": ([B + "train.epochs = 0"], "train.epochs must be a positive int; got 0"),
    "steps_per_loop_word": ([B + "train.steps_per_loop = 'fast'"],
                            "train.steps_per_loop must be an integer >= 1 (updates per compiled "
                            "call) or 'auto'; got 'fast'"),
    "negative_batch": ([B + "train.batch_size = -8"], "batch_size must be a positive int; got -8"),
    "zero_lr": ([B + "train.learning_rate = 0.0"],
                "learning_rate must be a positive float; got 0.0"),
    "negative_checkpoint_every_steps": ([B + "train.checkpoint_every_steps = -1"],
                                        "checkpoint_every_steps must be an integer >= 0"),
    "eval_batch_size": ([B + "train.eval_batch_size = 0"], "train.eval_batch_size"),
    "checkpoints_to_keep": ([B + "train.checkpoints_to_keep = 0"], "train.checkpoints_to_keep"),
    "negative_seed": ([B + "train.seed = -1"], "train.seed"),
    "log_every_steps": ([B + "train.log_every_steps = 0"], "train.log_every_steps"),
    "deterministic_string": ([B + "train.deterministic = 'no'"],
                             "train.deterministic='no' must be True or False"),
    "inputs_on_device_string": ([B + "train.inputs_on_device = 'yes'"],
                                "train.inputs_on_device must be True, False or 'auto'"),
    "inputs_on_device_with_repeats": ([B + "train.inputs_on_device = True",
                                       B + "train.repeats = 2"],
                                      "train.inputs_on_device = True cannot be used: "
                                      "train.repeats = 2 copies"),
    "cnn_batch_norm_string": ([B + "cnn_fashion.batch_norm = 'yes'"],
                              "cnn_fashion.batch_norm='yes' must be True or False"),
    "sgd_momentum": ([B + "SGD.momentum = 1.5"], "SGD.momentum = 1.5"),
    "sgd_nesterov_string": ([B + "SGD.nesterov = 'no'"], "SGD.nesterov='no' must be True or"),
    "lars_weight_decay": ([B + "train.optimizer = 'lars'", B + "LARS.weight_decay = -0.01"],
                          "weight_decay=-0.01"),
    "lars_trust_coefficient": ([B + "train.optimizer = 'lars'",
                                B + "LARS.trust_coefficient = 0"], "trust_coefficient=0"),
    "lars_momentum": ([B + "train.optimizer = 'lars'", B + "LARS.momentum = 2"], "momentum=2"),
    "augment_flip_string": ([B + "train.augment = 'standard'", B + "make_augment.flip = 'no'"],
                            "make_augment.flip='no'"),
    # Values whose first symptom was not an error: 0 examples read as "all of them", and an
    # astronomical epoch count hung before the first update (the phases are found per epoch).
    "max_test_examples_zero": ([B + "fashion_mnist.max_test_examples = 0"],
                               "fashion_mnist.max_test_examples=0 must be >= 1"),
    "epochs_astronomical": ([B + "train.epochs = 10000000000000000000000"],
                            "train.epochs=10000000000000000000000 is more than 1,000,000"),
    # inf ended as "OverflowError: cannot convert float infinity to integer", naming nothing.
    "max_restores_infinite": ([B + "train.max_restores = 1e999"],
                              "train.max_restores must be an integer >= 0; got inf"),
    # Run directories (prepared in _prepare_run_dirs).
    "different_config_run_dir": ([], "holds a run with a different config"),
    "checkpoint_of_another_model": ([], "cannot be restored into this run"),
    "damaged_checkpoint": ([], "ckpt-5 cannot be restored into this run"),
    "run_dir_is_a_file": ([], "not a folder"),
    "config_gin_not_utf8": ([], "is not UTF-8 text"),
    "config_gin_is_a_folder": ([], "should be a file"),
    "checkpoints_is_a_file": ([], "should be a folder"),
    # Data and the environment.
    "missing_fashion_mnist": ([B + "fashion_mnist.data_dir = '{tmp}/absent'"],
                              "apt-get install -y dataset-fashion-mnist"),
    "truncated_fashion_mnist": ([B + "fashion_mnist.data_dir = '{tmp}/truncated'"],
                                "holds 7839900 data bytes but its header says 7840000"),
    "labels_out_of_range": ([B + "fashion_mnist.data_dir = '{tmp}/badlabels'"],
                            "labels outside 0..9"),
    "malformed_tf_config": ([], "TF_CONFIG is malformed"),
    "tf_config_without_port": ([], "is not host:port"),
}
ENV = {"malformed_tf_config": {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                                            '"task": {"type": "worker", "index": 5}}'},
       "tf_config_without_port": {"TF_CONFIG": json.dumps(
           {"cluster": {"worker": ["127.0.0.1", "127.0.0.1:2"]},
            "task": {"type": "worker", "index": 0}})},
       "gin_import_side_effects": {"PYTHONPATH": "{tmp}/modules"}}
# Existing runs: the line must offer --overwrite (and the run stays as it was).
EXISTING_RUNS = ("different_config_run_dir", "checkpoint_of_another_model", "damaged_checkpoint")
# Run dirs that exist before the command (as something that is not a usable run).
PREPARED = (*EXISTING_RUNS, "run_dir_is_a_file", "config_gin_not_utf8", "config_gin_is_a_folder",
            "checkpoints_is_a_file")


def _cli_config_text(args: list[str]) -> str:
    """The config.gin the CLI writes for TINY + args (same parser, in this process)."""
    import gin

    from keras_largebatch import config

    config.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(Path(__file__).resolve().parents[1]))
    try:
        files = [a.split("=", 1)[1] for a in TINY]
        gin.parse_config_files_and_bindings(files, [a.split("=", 1)[1] for a in args])
        return gin.config_str()
    finally:
        gin.clear_config()


def _prepare_unrestorable(run_dir: Path, name: str) -> None:
    """config.gin matching the command, checkpoints that cannot be restored into it."""
    import tensorflow as tf

    from keras_largebatch.models import build_model

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (run_dir / "config.gin").write_text(_cli_config_text(CASES[name][0]))
    if name == "damaged_checkpoint":
        (ckpt_dir / "ckpt-5.index").write_bytes(b"\x00" * 64)
        (ckpt_dir / "ckpt-5.data-00000-of-00001").write_bytes(b"\x00" * 64)
        (ckpt_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
        return
    other = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10, filters=(4,))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=other), str(ckpt_dir), 2).save(7)


def _prepare_run_dirs(runs: Path) -> None:
    existing = runs / "different_config_run_dir"
    existing.mkdir(parents=True)
    (existing / "config.gin").write_text("train.epochs = 99\n")
    (existing / "checkpoints").mkdir()
    (existing / "checkpoints" / "ckpt-1.index").write_bytes(b"previous checkpoint")
    for name in ("checkpoint_of_another_model", "damaged_checkpoint"):
        _prepare_unrestorable(runs / name, name)
    (runs / "run_dir_is_a_file").write_text("my notes\n")
    for name in ("config_gin_not_utf8", "config_gin_is_a_folder", "checkpoints_is_a_file"):
        (runs / name).mkdir()
    (runs / "config_gin_not_utf8" / "config.gin").write_bytes(b"\xff\xfe\x00bad")
    (runs / "config_gin_is_a_folder" / "config.gin").mkdir()
    (runs / "checkpoints_is_a_file" / "checkpoints").write_text("not a folder\n")


def _copy_fashion_mnist(directory: Path) -> None:
    directory.mkdir()
    for f in Path(FASHION_MNIST_DIR).glob("*.gz"):
        shutil.copy(f, directory / f.name)


def _rewrite_gz(path: Path, change) -> None:
    with gzip.open(path) as f:
        raw = change(bytearray(f.read()))
    with gzip.open(path, "wb") as f:
        f.write(bytes(raw))


def _prepare(tmp: Path) -> None:
    (tmp / "bad.gin").write_text("train.epochs = 2\ntrain.batch_size 128\n")
    (tmp / "attack.gin").write_text(ATTACK.format(tmp=tmp))
    (tmp / "modules").mkdir()
    (tmp / "modules" / "evil_module.py").write_text(
        f"open({str(tmp / 'IMPORTED')!r}, 'w').write('ran')\n")
    (tmp / "imports.gin").write_text("import evil_module\ntrain.epochs = 1\n")
    _prepare_run_dirs(tmp / "runs")
    _copy_fashion_mnist(tmp / "truncated")
    _rewrite_gz(tmp / "truncated" / "t10k-images-idx3-ubyte.gz", lambda raw: raw[:-100])
    _copy_fashion_mnist(tmp / "badlabels")

    def label_12(raw):
        raw[8 + 5] = 12  # label of example 5: class 12 of 10
        return raw

    _rewrite_gz(tmp / "badlabels" / "train-labels-idx1-ubyte.gz", label_12)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case, one after another; the run dirs' tree after each, the whole tree at the
    end (the data copies are hashed once, not per case)."""
    tmp = tmp_path_factory.mktemp("bad_input")
    _prepare(tmp)
    before, runs_before = tree_state(tmp), tree_state(tmp / "runs")
    results = {}
    for name, (args, _) in CASES.items():
        args = [a.replace("{tmp}", str(tmp)) for a in args]
        env = {k: v.replace("{tmp}", str(tmp)) for k, v in ENV.get(name, {}).items()}
        proc = run_main(*TINY, *args, f"--run_dir={tmp / 'runs' / name}", env=env)
        results[name] = proc, tree_state(tmp / "runs")
    return tmp, results, runs_before, (before, tree_state(tmp))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(outcomes, name):
    tmp, results, runs_before, _ = outcomes
    proc, runs_after = results[name]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-2000:]
    assert CASES[name][1] in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    after = proc.stderr[proc.stderr.index(lines[0]) + len(lines[0]):]
    assert after.strip() == "", after  # no warning lines after the error
    run_dir = tmp / "runs" / name
    if name in EXISTING_RUNS:
        assert "--overwrite" in lines[0]
    if name not in PREPARED:
        assert not run_dir.exists()  # nothing half-written
    assert runs_after == runs_before  # the existing runs and checkpoints untouched


def test_no_case_changed_anything_anywhere(outcomes):
    _, _, _, (before, after) = outcomes
    assert after == before  # nothing created, changed or removed: data copies, gin files


def test_the_config_attacks_did_not_run(outcomes):
    tmp, _, _, _ = outcomes
    assert not (tmp / "PWNED").exists()
    assert not (tmp / "IMPORTED").exists()
