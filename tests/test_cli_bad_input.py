"""Bad input beyond the catalogue of tests/test_cli_errors.py, through the real CLI: gin files
that would run code, Keras' own optimizer arguments, every `train.*` number, booleans given as
strings, unusable run directories, damaged data and TF_CONFIG, bad flags.

Each case asserts: exit status 2, exactly one `error:` line on stderr naming the value, no
traceback, nothing after the error line, and the run dir (and every prepared folder) byte-for-
byte as before. The cases run concurrently (separate processes) from one fixture.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from keras_largebatch.data.sources import FASHION_MNIST_DIR

from .cli import REPO, TINY, error_lines, run_cli, tree_state

pytestmark = pytest.mark.slow  # ~25 CLI processes, 3 at a time

B = "--gin_bindings="
ATTACK = """from __gin__ import dynamic_registration
import os
os.system.command = 'touch {tmp}/PWNED'
train.learning_rate = @os.system()
"""
CASES = {
    # name: (extra CLI args, text the single error line must contain)
    "gin_dynamic_registration": (["--gin_file={tmp}/attack.gin", "--dry_run"],
                                 "'from __gin__ import dynamic_registration' in attack.gin, "
                                 "line 1"),
    "gin_import_side_effects": (["--gin_file={tmp}/imports.gin"], "'import evil_module'"),
    "gin_import_in_bindings": ([B + "import os"], "--gin_allow_imports"),
    "sgd_momentum": ([B + "SGD.momentum = 1.5"], "SGD.momentum = 1.5"),
    "sgd_nesterov_string": ([B + "SGD.nesterov = 'no'"], "SGD.nesterov='no' must be True or"),
    "lars_weight_decay": ([B + "train.optimizer = 'lars'", B + "LARS.weight_decay = -0.01"],
                          "weight_decay=-0.01"),
    "lars_trust_coefficient": ([B + "train.optimizer = 'lars'",
                                B + "LARS.trust_coefficient = 0"], "trust_coefficient=0"),
    "lars_momentum": ([B + "train.optimizer = 'lars'", B + "LARS.momentum = 2"], "momentum=2"),
    "eval_batch_size": ([B + "train.eval_batch_size = 0"], "train.eval_batch_size"),
    "checkpoints_to_keep": ([B + "train.checkpoints_to_keep = 0"], "train.checkpoints_to_keep"),
    "negative_seed": ([B + "train.seed = -1"], "train.seed"),
    "log_every_steps": ([B + "train.log_every_steps = 0"], "train.log_every_steps"),
    "deterministic_string": ([B + "train.deterministic = 'no'"],
                             "train.deterministic='no' must be True or False"),
    "augment_flip_string": ([B + "train.augment = 'standard'", B + "make_augment.flip = 'no'"],
                            "make_augment.flip='no'"),
    "run_dir_is_a_file": ([], "not a folder"),
    "config_gin_not_utf8": ([], "is not UTF-8 text"),
    "config_gin_is_a_folder": ([], "should be a file"),
    "checkpoints_is_a_file": ([], "should be a folder"),
    "labels_out_of_range": ([B + "fashion_mnist.data_dir = '{tmp}/badlabels'"],
                            "labels outside 0..9"),
    "tf_config_without_port": ([], "is not host:port"),
    # Values whose first symptom was not an error: 0 examples read as "all of them", and an
    # astronomical epoch count hung before the first update (the phases are found per epoch).
    "max_test_examples_zero": ([B + "fashion_mnist.max_test_examples = 0"],
                               "fashion_mnist.max_test_examples=0 must be >= 1"),
    "epochs_astronomical": ([B + "train.epochs = 10000000000000000000000"],
                            "train.epochs=10000000000000000000000 is more than 1,000,000"),
    # inf ended as "OverflowError: cannot convert float infinity to integer", naming nothing.
    "max_restores_infinite": ([B + "train.max_restores = 1e999"],
                              "train.max_restores must be an integer >= 0; got inf"),
    "unknown_flag": (["--epochz=3"], "Unknown command line flag 'epochz'"),
    "bool_flag_value": (["--overwrite=maybe"], "--overwrite=maybe"),
}
ENV = {"tf_config_without_port": {"TF_CONFIG": json.dumps(
    {"cluster": {"worker": ["127.0.0.1", "127.0.0.1:2"]}, "task": {"type": "worker",
                                                                   "index": 0}})},
       "gin_import_side_effects": {"PYTHONPATH": "{tmp}/modules"}}


def _prepare(tmp: Path) -> None:
    (tmp / "attack.gin").write_text(ATTACK.format(tmp=tmp))
    (tmp / "modules").mkdir()
    (tmp / "modules" / "evil_module.py").write_text(
        f"open({str(tmp / 'IMPORTED')!r}, 'w').write('ran')\n")
    (tmp / "imports.gin").write_text("import evil_module\ntrain.epochs = 1\n")
    runs = tmp / "runs"
    runs.mkdir()
    (runs / "run_dir_is_a_file").write_text("my notes\n")
    for name in ("config_gin_not_utf8", "config_gin_is_a_folder", "checkpoints_is_a_file"):
        (runs / name).mkdir()
    (runs / "config_gin_not_utf8" / "config.gin").write_bytes(b"\xff\xfe\x00bad")
    (runs / "config_gin_is_a_folder" / "config.gin").mkdir()
    (runs / "checkpoints_is_a_file" / "checkpoints").write_text("not a folder\n")
    bad = tmp / "badlabels"
    bad.mkdir()
    for f in Path(FASHION_MNIST_DIR).glob("*.gz"):
        shutil.copy(f, bad / f.name)
    with gzip.open(bad / "train-labels-idx1-ubyte.gz") as f:
        raw = bytearray(f.read())
    raw[8 + 5] = 12  # label of example 5: class 12 of 10
    with gzip.open(bad / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(raw))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input2")
    _prepare(tmp)
    before = tree_state(tmp)

    def run(name):
        args = [a.replace("{tmp}", str(tmp)) for a in CASES[name][0]]
        env = {k: v.replace("{tmp}", str(tmp)) for k, v in ENV.get(name, {}).items()}
        proc = run_cli(*TINY, *args, f"--run_dir={tmp / 'runs' / name}", env=env)
        return name, proc

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(run, CASES))
    return tmp, results, before


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(outcomes, name):
    tmp, results, before = outcomes
    proc = results[name]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-2000:]
    assert CASES[name][1] in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    after = proc.stderr[proc.stderr.index(lines[0]) + len(lines[0]):]
    assert after.strip() == "", after  # no warning lines after the error
    assert tree_state(tmp) == before  # nothing created, changed or removed anywhere


def test_the_config_attacks_did_not_run(outcomes):
    tmp, _, _ = outcomes
    assert not (tmp / "PWNED").exists()
    assert not (tmp / "IMPORTED").exists()


def test_gin_allow_imports_lets_a_trusted_config_run_code(tmp_path):
    """The import attack with the flag: the module's code runs (the flag means what the README
    says), and the run goes on to use the config."""
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "evil_module.py").write_text(
        f"open({str(tmp_path / 'IMPORTED')!r}, 'w').write('ran')\n")
    (tmp_path / "imports.gin").write_text("import evil_module\ntrain.epochs = 1\n")
    proc = run_cli(*TINY, f"--gin_file={tmp_path / 'imports.gin'}", "--gin_allow_imports",
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


def test_a_read_only_file_system_is_one_line(tmp_path):
    """--run_dir on a read-only mount (a tmpfs mounted ro here; needs root): one line, exit 2."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1M", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        proc = run_cli(*TINY, f"--run_dir={mount / 'run'}")
        lines = error_lines(proc)
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert "is not a writable folder" in lines[0] and "Traceback" not in proc.stderr
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)
