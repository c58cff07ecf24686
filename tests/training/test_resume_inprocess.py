"""Exact resume in-process (no TensorFlow start-up per run): a run stopped by SIGTERM mid-epoch
(the graceful path main.py installs) and started again ends bitwise equal to an uninterrupted
one, for BA-Momentum (optimizer chunk state, the BA step's per-epoch sums) on 2 replicas."""

import json
import signal

import pytest

from keras_largebatch.optimizers import BAMomentum
from keras_largebatch.training.components import Components
from keras_largebatch.training.loop import train
from keras_largebatch.training.signals import SignalCatcher, exit_status

from ..faults import SignalAtStep
from .helpers import comparable, fashion_subset


def test_ba_momentum_stopped_mid_epoch_resumes_exactly(tmp_path, two_cpu_strategy):
    components = Components().replace(optimizers={
        "ba_momentum": lambda **kw: BAMomentum(min_increment=32, max_batch_size=512, **kw)})
    kw = dict(dataset=fashion_subset(), model_options={"filters": (8, 16), "dropout": 0.25},
              optimizer="ba_momentum", learning_rate=0.05, batch_size=32, epochs=2,
              checkpoint_every_steps=0, strategy=two_cpu_strategy, verbose=False,
              components=components)
    reference = train(run_dir=str(tmp_path / "ref"), **kw)

    catcher = SignalCatcher()  # the graceful path main.py installs
    with catcher.installed():
        stopped = train(run_dir=str(tmp_path / "run"), signals=catcher,
                        extra_actions=[SignalAtStep(40, signal.SIGTERM)], **kw)  # chunk 40/64
    assert stopped["status"] == "interrupted" and exit_status(stopped) == 143
    assert stopped["epochs"] == []  # stopped inside epoch 1
    resumed = train(run_dir=str(tmp_path / "run"), **kw)

    assert resumed["status"] == "completed"
    assert comparable(resumed) == comparable(reference)  # incl. weights_sha256, ba/* sums
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["weights_sha256"] == reference["weights_sha256"]
    assert reference["epochs"][0]["ba/updates_per_epoch"] > 0


@pytest.mark.parametrize("status,code", [("completed", 0), ("diverged", 3), ("dry_run", 0)])
def test_exit_status(status, code):
    assert exit_status({"status": status}) == code
    assert exit_status({"status": "interrupted", "interrupted_by_signal": 2}) == 130
