"""Every shipped gin file parses and builds what it names (tfds sources on mocked data).

Each file is parsed after gin.clear_config() with tiny overrides, then `train(dry_run=True)`
builds the data source, batch phases, model, optimizer and schedules, and writes nothing.
"""

from pathlib import Path

import gin
import pytest
import tensorflow_datasets as tfds

from keras_largebatch import config
from keras_largebatch.training import optimizer_factory

REPO = Path(__file__).resolve().parents[1]
GIN_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "gin").rglob("*.gin")
                   if not any(f"/{d}/" in p.as_posix() for d in ("models", "runs", "studies")))
STUDY_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "gin" / "studies").glob(
    "*.gin"))
# Mocked tfds sources are small: train one epoch (only the first phase's batch must fit).
CIFAR = (["train.epochs = 1"], 1024)
IMAGENET = (["train.epochs = 1", "imagenet2012.image_size = 32", "train.batch_size = 16",
             "train.max_per_replica_batch = 8"], 32)


def _overrides(text: str) -> tuple[list[str], int]:
    if "gin/runs/imagenet.gin" in text:
        return IMAGENET
    if "cifar" in text:
        return CIFAR
    return [], 0


def _train(**kwargs) -> dict:
    """`train` as main calls it: the gin-configurable one, with gin-configurable components."""
    configured = config.register_configurables()
    return configured.train(components=configured.components, **kwargs)


@pytest.fixture(autouse=True)
def _clean_gin():
    config.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    yield
    gin.clear_config()


def test_every_layer_file_is_used():
    layers = {p.relative_to(REPO).as_posix() for p in (REPO / "gin").rglob("*.gin")
              if "/models/" in p.as_posix() or "/runs/" in p.as_posix()}
    included = "".join((REPO / f).read_text() for f in GIN_FILES)
    assert {f for f in layers if f"'{f}'" not in included} == set()


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_gin_file_parses_and_builds(gin_file, tmp_path):
    text = (REPO / gin_file).read_text()
    assert text.startswith("#"), "every gin file starts with a header comment"
    overrides, mock_examples = _overrides(text)
    gin.parse_config_files_and_bindings([str(REPO / gin_file)], overrides)
    with tfds.testing.mock_data(num_examples=mock_examples or 1):
        summary = _train(run_dir=str(tmp_path / "run"), dry_run=True, verbose=False)
    assert summary["status"] == "dry_run" and summary["parameters"] > 0
    assert summary["phases"] and summary["learning_rate"] >= 0  # warmups may start at 0
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("study_file", STUDY_FILES)
def test_study_file_expands_and_its_runs_build(study_file, tmp_path):
    """A study (gin/studies/) expands to runs; the first and last run configs build."""
    from keras_largebatch.studies import grid as sweep

    text = (REPO / study_file).read_text()
    assert f"--gin_file={study_file}" in text, "the header gives the study's command"
    gin.clear_config()
    study = sweep.load_study([str(REPO / study_file)], [])
    assert len(study.runs) >= 2
    # every binding of every run names a real configurable parameter (one parse of them all;
    # later bindings win, so conflicting values parse too)
    gin.clear_config()
    every = list(dict.fromkeys(b for run in study.runs for b in run.bindings))
    gin.parse_config_files_and_bindings([str(REPO / f) for f in study.runs[0].gin_files], every)
    for run in (study.runs[0], study.runs[-1]):
        gin.clear_config()
        files = [str(REPO / f) for f in run.gin_files]
        gin.parse_config_files_and_bindings(files, list(run.bindings))
        summary = _train(run_dir=str(tmp_path / run.name), dry_run=True, verbose=False)
        assert summary["status"] == "dry_run"


@pytest.mark.parametrize("bindings, name, expected", [
    (["SGD.momentum = 0.9"], "sgd", 0.0),        # 'sgd' is plain SGD even under a 0.9 binding
    (["SGD.momentum = 0.9"], "momentum", 0.9),
    (["SGD.momentum = 0.5"], "momentum", 0.5),   # the binding wins over the 0.9 default
    ([], "momentum", 0.9),
    ([], "sgd", 0.0),
    (["BAMomentum.momentum = 0.9"], "ba_sgd", 0.0),
])
def test_optimizer_names_mean_what_they_say(bindings, name, expected):
    """Seed 002 compares "-SGD" with "-Momentum" runs of one config by train.optimizer alone
    (gin/studies/ba_momentum.gin); a bound SGD.momentum must not turn 'sgd' into momentum."""
    gin.parse_config_files_and_bindings([], bindings)
    optimizer = optimizer_factory.create_optimizer(
        name, learning_rate=0.1, optimizers=config.register_configurables().components.optimizers)
    assert optimizer.momentum == expected
