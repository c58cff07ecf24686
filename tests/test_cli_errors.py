"""Bad input through the real CLI: one line naming the value and the fix, exit status 2, and
no run directory written (or, for an existing run, nothing in it changed).

The cases run concurrently (each is a separate process that imports TensorFlow) from one
fixture; each parametrised test then checks its own case.
"""

import gzip
import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from keras_largebatch.data.sources import FASHION_MNIST_DIR

from .cli import TINY, error_lines, run_cli

pytestmark = pytest.mark.slow  # ~22 CLI processes, 3 at a time: over a minute on 2 cores

B = "--gin_bindings="
CASES = {
    # name: (extra CLI args, text the single error line must contain)
    "unknown_binding": ([B + "train.epochz = 3"], "epochz"),
    "unknown_configurable": ([B + "trian.epochs = 3"], "trian"),
    "malformed_gin": ([B + "train.epochs = (3"], "bad gin config"),
    "wrong_type": ([B + "train.epochs = 'three'"], "train.epochs must be a positive int; "
                   "got 'three'"),
    "unknown_dataset": ([B + "train.dataset = 'cifar11'"], "unknown dataset 'cifar11'"),
    "unknown_model": ([B + "train.model = 'resnet9'"], "unknown model 'resnet9'"),
    "unknown_optimizer": ([B + "train.optimizer = 'sgdd'"], "unknown optimizer 'sgdd'"),
    "batch_not_divisible": ([B + "make_strategy.num_cpu_replicas = 2",
                             B + "train.batch_size = 255"],
                            "255 is not divisible by the 2 replicas"),
    "batch_too_large": ([B + "fashion_mnist.max_train_examples = 1000",
                         B + "train.batch_size = 2000"], "larger than the training set (1000"),
    "zero_epochs": ([B + "train.epochs = 0"], "train.epochs must be a positive int; got 0"),
    "negative_batch": ([B + "train.batch_size = -8"], "batch_size must be a positive int; got -8"),
    "zero_lr": ([B + "train.learning_rate = 0.0"],
                "learning_rate must be a positive float; got 0.0"),
    "missing_fashion_mnist": ([B + "fashion_mnist.data_dir = '{tmp}/absent'"],
                              "apt-get install -y dataset-fashion-mnist"),
    "truncated_fashion_mnist": ([B + "fashion_mnist.data_dir = '{tmp}/truncated'"],
                                "holds 7839900 data bytes but its header says 7840000"),
    "different_config_run_dir": ([], "holds a run with a different config"),
    # Reliability (issue 8): files, checkpoints, TF_CONFIG, policies, divergence settings.
    "malformed_gin_file": (["--gin_file={tmp}/bad.gin"], "(bad.gin, line 2)"),
    "checkpoint_of_another_model": ([], "cannot be restored into this run"),
    "damaged_checkpoint": ([], "ckpt-5 cannot be restored into this run"),
    "malformed_tf_config": ([], "TF_CONFIG is malformed"),
    "unknown_policy": ([B + "train.augment = 'nope'"], "unknown augmentation policy 'nope'"),
    "unknown_on_divergence": ([B + "train.on_divergence = 'retry'"],
                              "train.on_divergence must be 'stop' or 'restore'; got 'retry'"),
    "negative_checkpoint_every_steps": ([B + "train.checkpoint_every_steps = -1"],
                                        "checkpoint_every_steps must be an integer >= 0"),
}
ENV = {"malformed_tf_config": {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                                            '"task": {"type": "worker", "index": 5}}'}}
# Run dirs whose config.gin matches the command but whose checkpoints cannot be restored.
PREPARED = ("checkpoint_of_another_model", "damaged_checkpoint")


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


def _make_bad_gin_file(path: Path) -> None:
    path.write_text("train.epochs = 2\ntrain.batch_size 128\n")


def _make_truncated_copy(directory: Path) -> None:
    directory.mkdir()
    for f in Path(FASHION_MNIST_DIR).glob("*.gz"):
        shutil.copy(f, directory / f.name)
    with gzip.open(directory / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    with gzip.open(directory / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    _make_truncated_copy(tmp / "truncated")
    existing = tmp / "runs" / "different_config_run_dir"
    existing.mkdir(parents=True)
    (existing / "config.gin").write_text("train.epochs = 99\n")
    (existing / "checkpoints").mkdir()
    (existing / "checkpoints" / "ckpt-1.index").write_bytes(b"previous checkpoint")
    _make_bad_gin_file(tmp / "bad.gin")
    for name in PREPARED:
        _prepare_unrestorable(tmp / "runs" / name, name)
    before = {name: _tree_digest(tmp / "runs" / name)
              for name in ("different_config_run_dir", *PREPARED)}

    def run(name):
        args = [a.format(tmp=tmp) for a in CASES[name][0]]
        run_dir = tmp / "runs" / name
        return name, run_cli(*TINY, *args, f"--run_dir={run_dir}", env=ENV.get(name)), run_dir

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = {name: (proc, run_dir) for name, proc, run_dir in pool.map(run, CASES)}
    return results, before, _tree_digest


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line(outcomes, name):
    results, before, digest = outcomes
    proc, run_dir = results[name]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-1500:]
    assert CASES[name][1] in lines[0], lines[0]
    if name in before:
        assert "--overwrite" in lines[0]
        assert digest(run_dir) == before[name]  # the existing run and checkpoints untouched
    else:
        assert not run_dir.exists()  # nothing half-written
