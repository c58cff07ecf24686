"""Exact resume in-process (no TensorFlow start-up per run): a run stopped by SIGTERM mid-epoch
(the graceful path main.py installs) and started again ends bitwise equal to an uninterrupted
one, for BA-Momentum (optimizer chunk state, the BA step's per-epoch sums) on 2 replicas."""

import json

import pytest

from keras_largebatch.optimizers import BAMomentum
from keras_largebatch.training import interrupt, optimizer_factory
from keras_largebatch.training.loop import train

from .helpers import fashion_subset

WALL_CLOCK = {"epoch_time_s", "samples_per_second", "wall_time_s"}


def _comparable(results: dict) -> dict:
    results = {k: v for k, v in results.items() if k not in WALL_CLOCK}
    results["epochs"] = [{k: v for k, v in e.items() if k not in WALL_CLOCK}
                         for e in results["epochs"]]
    return results


def test_ba_momentum_stopped_mid_epoch_resumes_exactly(tmp_path, two_cpu_strategy, monkeypatch):
    monkeypatch.setitem(optimizer_factory.OPTIMIZERS, "ba_momentum",
                        lambda **kw: BAMomentum(min_increment=32, max_batch_size=512, **kw))
    kw = dict(dataset=fashion_subset(), model_options={"filters": (8, 16), "dropout": 0.25},
              optimizer="ba_momentum", learning_rate=0.05, batch_size=32, epochs=2,
              checkpoint_every_steps=0, strategy=two_cpu_strategy, verbose=False)
    reference = train(run_dir=str(tmp_path / "ref"), **kw)

    monkeypatch.setenv("KERAS_LARGEBATCH_TEST_SIGNAL_AT_STEP", "40:SIGTERM")  # chunk 40 of 64
    with interrupt.graceful_signals():
        stopped = train(run_dir=str(tmp_path / "run"), **kw)
    assert stopped["status"] == "interrupted" and interrupt.exit_status(stopped) == 143
    assert stopped["epochs"] == []  # stopped inside epoch 1
    monkeypatch.delenv("KERAS_LARGEBATCH_TEST_SIGNAL_AT_STEP")
    resumed = train(run_dir=str(tmp_path / "run"), **kw)

    assert resumed["status"] == "completed"
    assert _comparable(resumed) == _comparable(reference)  # incl. weights_sha256, ba/* sums
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["weights_sha256"] == reference["weights_sha256"]
    assert reference["epochs"][0]["ba/updates_per_epoch"] > 0


@pytest.mark.parametrize("status,code", [("completed", 0), ("diverged", 3), ("dry_run", 0)])
def test_exit_status(status, code):
    assert interrupt.exit_status({"status": status}) == code
    assert interrupt.exit_status({"status": "interrupted", "interrupted_by_signal": 2}) == 130
