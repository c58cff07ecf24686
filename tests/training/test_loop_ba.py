"""BA-Momentum in the framework loop: chosen by name, fed m0-sized chunks, one trace, per-update
TensorBoard scalars, and clear errors for settings that do not apply to it."""

import glob

import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.optimizers import BAMomentum
from keras_largebatch.training.components import Components
from keras_largebatch.training.loop import train

from .helpers import fashion_subset

SMALL = {"filters": (8, 16), "dropout": 0.0}


@pytest.fixture
def ba_registered():
    """Components whose 'ba_momentum' grows the batch by 32 up to 512."""
    return Components().replace(optimizers={
        "ba_momentum": lambda **kw: BAMomentum(min_increment=32, max_batch_size=512, **kw)})


def _tags(run_dir):
    counts = {}
    for path in glob.glob(f"{run_dir}/tensorboard/events.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                counts[v.tag] = counts.get(v.tag, 0) + 1
    return counts


def test_ba_in_the_loop_logs_every_update(tmp_path, two_cpu_strategy, ba_registered):
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), model_options=SMALL,
                    optimizer="ba_momentum", learning_rate=0.05, batch_size=32, epochs=2,
                    strategy=two_cpu_strategy, verbose=False, components=ba_registered)
    assert results["trace_count"] == 1
    epochs = results["epochs"]
    updates = sum(e["ba/updates_per_epoch"] for e in epochs)
    assert updates >= 1
    # Every chunk of 32 is used by exactly one update or still being accumulated.
    for e in epochs:
        assert e["ba/mean_batch_size"] >= 32 and e["ba/mean_batch_size"] % 32 == 0
        assert e["ba/updates_per_epoch"] * e["ba/mean_batch_size"] <= 2048
    tags = _tags(tmp_path)
    for tag in ("ba/batch_size", "ba/m_star", "ba/mu", "ba/sigma", "ba/s"):
        assert tags.get(tag) == updates, tag


@pytest.mark.parametrize("overrides,match", [
    ({"batch_size": 64}, "must equal BAMomentum.min_increment = 32"),
    ({"repeats": 2}, "train.repeats = 2 is not supported"),
])
def test_ba_rejects_settings_that_do_not_apply(tmp_path, one_cpu_strategy, ba_registered,
                                               overrides, match):
    kwargs = dict(run_dir=str(tmp_path / "r"), dataset=fashion_subset(), model_options=SMALL,
                  optimizer="ba_momentum", learning_rate=0.05, batch_size=32, epochs=1,
                  strategy=one_cpu_strategy, verbose=False, components=ba_registered)
    with pytest.raises(UserInputError, match=match):
        train(**{**kwargs, **overrides})
    assert not (tmp_path / "r").exists()
