"""Each action of the loop on its own (training/actions/), with real parts: a small Keras model,
its optimizer, a real Checkpointer writing to a temporary folder, the running metrics, the
divergence guard, a real SignalCatcher receiving a real SIGTERM, a MirroredStrategy.

The rule the checkpointer owns: no save happens when its guard (the divergence check) objects;
the guard's outcome is then the action's."""

import math
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from keras_largebatch.schedules.progress import Progress
from keras_largebatch.training.actions import Rewind, StepOutput, Stop
from keras_largebatch.training.actions.checkpoint import PeriodicCheckpoint
from keras_largebatch.training.actions.divergence import DivergenceCheck
from keras_largebatch.training.actions.preemption import PreemptionCheckpoint
from keras_largebatch.training.actions.preemption_sync import PreemptionSync
from keras_largebatch.training.actions.step_summaries import StepSummaries
from keras_largebatch.training.checkpoint import Checkpointer, Position
from keras_largebatch.training.divergence import DivergenceGuard
from keras_largebatch.training.metrics import RunningMetrics
from keras_largebatch.training.signals import SignalCatcher
from keras_largebatch.training.summaries import Summaries


class Run:
    """The parts an action sees, for a 2-epoch run of 10 updates per epoch."""

    def __init__(self, tmp_path, strategy, mode="stop"):
        self.guard = DivergenceGuard(on_divergence=mode, max_restores=1)
        with strategy.scope():
            self.model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            self.optimizer = keras.optimizers.SGD(
                self.guard.wrap_learning_rate(0.1))
            self.optimizer.build(self.model.trainable_variables)
            self.metrics = RunningMetrics()
        self.progress = Progress()
        self.progress.begin_epoch(0, 10)
        self.checkpointer = Checkpointer(
            run_dir=str(tmp_path), model=self.model, optimizer=self.optimizer,
            progress=self.progress, metrics=self.metrics, strategy=strategy, chief=True,
            lr_multiplier=self.guard.lr_multiplier, keep=10, verbose=False)
        self.checkpointer.restore()
        self.divergence = DivergenceCheck(
            self.guard, self.checkpointer, metrics=self.metrics, progress=self.progress,
            variables=[*self.model.variables, *self.optimizer.variables], log_every_steps=5)
        self.checkpointer.save_guard = lambda out: self.divergence.check(out, before_save=True)
        self.divergence.begin_epoch(Position(0, 0, 0))

    def update(self, loss=0.5, n=4):
        """What the compiled step does to the host-visible state: metrics and the clock."""
        self.metrics.update(loss * n, n / 2, n)
        self.progress.advance(n)

    def saved(self) -> list[int]:
        names = os.listdir(self.checkpointer.directory) if os.path.isdir(
            self.checkpointer.directory) else []
        return sorted(int(n.split("-")[1].split(".")[0]) for n in names
                      if n.startswith("ckpt-") and n.endswith(".index"))


def out(updates, *, epoch=0, steps=10, epoch_end=False):
    step = steps if epoch_end else updates - epoch * steps
    return StepOutput(updates=updates, epoch=epoch, step=step, steps=steps, epoch_end=epoch_end)


def test_periodic_checkpoint_saves_on_multiples_but_not_the_last_update(tmp_path,
                                                                        one_cpu_strategy):
    run = Run(tmp_path, one_cpu_strategy)
    action = PeriodicCheckpoint(run.checkpointer, every_steps=4)
    for u in range(1, 11):
        run.update()
        assert action(out(u)) is None
    assert run.saved() == [4, 8]                       # 12 would be past the epoch; 10 is last
    assert action(out(10, epoch_end=True)) is None
    assert run.saved() == [4, 8, 10]                   # the epoch end saves after evaluation
    assert PeriodicCheckpoint(run.checkpointer, every_steps=0)(out(12, epoch=1)) is None


def test_no_save_when_the_loss_diverged(tmp_path, one_cpu_strategy):
    run = Run(tmp_path, one_cpu_strategy)
    action = PeriodicCheckpoint(run.checkpointer, every_steps=2)
    run.update()
    run.update(loss=math.nan)
    outcome = action(out(2))
    assert isinstance(outcome, Stop) and outcome.status == "diverged"
    assert outcome.fields["divergence"]["update"] == 2
    assert run.saved() == []


def test_no_save_when_a_weight_is_not_finite(tmp_path, one_cpu_strategy):
    run = Run(tmp_path, one_cpu_strategy)
    kernel = run.model.layers[0].kernel
    kernel.assign(np.full(kernel.shape, np.inf, np.float32))
    run.update()
    outcome = PeriodicCheckpoint(run.checkpointer, every_steps=1)(out(1))
    assert isinstance(outcome, Stop)
    assert "non-finite weights" in outcome.fields["divergence"]["reason"]
    assert run.saved() == []


def test_divergence_check_runs_every_log_every_steps_and_on_the_last_update(tmp_path,
                                                                            one_cpu_strategy):
    run = Run(tmp_path, one_cpu_strategy)
    run.update(loss=math.inf)
    assert run.divergence(out(1)) is None              # not a checking update (5, 10)
    for u in range(2, 5):
        run.update()
        assert run.divergence(out(u)) is None
    run.update()
    assert isinstance(run.divergence(out(5)), Stop)    # the window since the last check: inf


def test_divergence_restore_rewinds_to_the_last_checkpoint_with_a_lower_lr(tmp_path,
                                                                          one_cpu_strategy):
    run = Run(tmp_path, one_cpu_strategy, mode="restore")
    for _ in range(3):
        run.update()
    run.checkpointer.save(3)
    for u in range(4, 6):
        run.update(loss=math.nan if u == 5 else 0.5)
    outcome = run.divergence(out(5))
    assert isinstance(outcome, Rewind) and outcome.position == Position(0, 3, 3)
    assert float(run.guard.lr_multiplier.numpy()) == pytest.approx(0.5)
    assert run.checkpointer.state.restores == 1
    assert int(run.progress.step_in_epoch.numpy()) == 3


def test_preemption_saves_at_this_update_and_stops(tmp_path, one_cpu_strategy):
    run = Run(tmp_path, one_cpu_strategy)
    catcher = SignalCatcher()
    action = PreemptionCheckpoint(catcher, run.checkpointer, epochs=2)
    with catcher.installed():
        run.update()
        assert action(out(1)) is None                  # nothing received
        os.kill(os.getpid(), signal.SIGTERM)
        run.update()
        outcome = action(out(2))
    assert isinstance(outcome, Stop) and outcome.status == "interrupted"
    assert outcome.fields == {"interrupted_by": "SIGTERM",
                              "interrupted_by_signal": int(signal.SIGTERM)}
    assert run.saved() == [2]


def test_preemption_waits_for_the_epoch_end_and_not_past_the_last_epoch(tmp_path,
                                                                        one_cpu_strategy):
    run = Run(tmp_path, one_cpu_strategy)
    received = {"signal": int(signal.SIGINT)}
    action = PreemptionCheckpoint(SignalCatcher(), run.checkpointer, epochs=2,
                                  received=lambda: received["signal"])
    run.update()
    assert action(out(10)) is None                     # last update: the epoch end saves
    assert run.saved() == []
    stop = action(out(10, epoch_end=True))
    assert isinstance(stop, Stop) and stop.fields["interrupted_by"] == "SIGINT"
    assert action(out(20, epoch=1, epoch_end=True)) is None   # the run is over anyway


def test_preemption_sync_agrees_on_the_signal_of_any_replica(two_cpu_strategy):
    catcher = SignalCatcher()
    sync = PreemptionSync(catcher, two_cpu_strategy)
    assert sync(out(1)) is None and sync.received() is None
    catcher.received = int(signal.SIGINT)              # what the handler records
    assert sync(out(2)) is None
    assert sync.received() == int(signal.SIGINT) and sync.updates == 2
    catcher.received = int(signal.SIGTERM)
    sync(out(3))
    assert sync.received() == int(signal.SIGINT)       # once agreed, the answer stays


def test_step_summaries_every_log_every_steps_against_samples_seen(tmp_path, one_cpu_strategy):
    run = Run(tmp_path / "ckpt", one_cpu_strategy)
    summaries = Summaries(str(tmp_path), enabled=True)
    action = StepSummaries(summaries, metrics=run.metrics, progress=run.progress,
                           current_lr=lambda: 0.1, batch_size=lambda epoch: 4 * (epoch + 1),
                           log_every_steps=3)
    for u in range(1, 8):
        run.update()
        action(out(u))
    action(out(10, epoch_end=True))
    summaries.flush()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    steps = [e.step for e in events.Tensors("step/loss")]
    assert steps == [12, 24]                           # updates 3 and 6, 4 samples each
    assert [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("step/loss")] == [
        pytest.approx(0.5), pytest.approx(0.5)]
