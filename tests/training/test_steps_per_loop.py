"""`train.steps_per_loop = K`: K updates per compiled call (steps/many_updates.py) give the
weights of K single calls bitwise (train.deterministic), the actions act at the same update
counts, and a run stopped by SIGTERM resumes bitwise across a loop boundary and a phase change.
In-process, real Fashion-MNIST subset, two replicas."""

import itertools
import signal

import pytest

from keras_largebatch.schedules import AdaBatch
from keras_largebatch.training.actions import Action
from keras_largebatch.training.loop import train
from keras_largebatch.training.signals import SignalCatcher

from ..faults import SignalAtStep
from .helpers import comparable, fashion_subset


class Recorder(Action):
    """The update counts at which the loop ran the actions."""

    def __init__(self):
        self.seen = []

    def __call__(self, out):
        self.seen.append((out.updates, out.step, out.epoch_end))



class EpochEnds(Action):
    every_update = False

    def __init__(self):
        self.seen = []

    def __call__(self, out):
        if out.epoch_end:
            self.seen.append((out.updates, out.epoch))


def _kw(strategy, **extra):
    # 2048 images: batch 64 for epoch 1 (32 updates), then 128 (16 updates): a phase change.
    return dict(dataset=fashion_subset(), model_options={"filters": (8, 16), "dropout": 0.25},
                optimizer="momentum", learning_rate=0.05, epochs=2,
                batch_schedule=AdaBatch(64, interval_epochs=1, growth_factor=2, lr_decay=0.75),
                log_every_steps=10, checkpoint_every_steps=12, deterministic=True,
                strategy=strategy, verbose=False, **extra)


@pytest.fixture(scope="module")
def one_per_call(tmp_path_factory, two_cpu_strategy):
    recorder = Recorder()
    results = train(run_dir=str(tmp_path_factory.mktemp("k1") / "run"),
                    extra_actions=[recorder], **_kw(two_cpu_strategy))
    return results, recorder.seen


@pytest.mark.parametrize("k", [5, 64])
def test_k_updates_per_call_equal_k_calls(one_per_call, tmp_path, two_cpu_strategy, k):
    expected, seen_k1 = one_per_call
    recorder = Recorder()
    got = train(run_dir=str(tmp_path / "run"), steps_per_loop=k, extra_actions=[recorder],
                **_kw(two_cpu_strategy))
    assert comparable(got) == comparable(expected)  # weights sha256, losses, phases
    assert got["trace_count"] == 1
    # Calls end at the epoch ends and at every multiple of log_every_steps (10) and
    # checkpoint_every_steps (12): the actions acting on counts see every one of them.
    boundaries = {u for u, _, _ in seen_k1 if u % 10 == 0 or u % 12 == 0} | {32, 48}
    assert boundaries <= {u for u, _, _ in recorder.seen}
    assert all(b - a <= k for (a, _, _), (b, _, _) in zip(recorder.seen, recorder.seen[1:]))
    if k == 5:
        assert len([s for s in recorder.seen if not s[2]]) < len(seen_k1) / 2


def test_stopped_at_a_loop_boundary_resumes_bitwise_across_a_phase_change(
        one_per_call, tmp_path, two_cpu_strategy):
    expected, _ = one_per_call
    catcher = SignalCatcher()
    # K = 8 with boundaries every 10 and 12 updates: calls end at 8, 10, 12, 20, 24, 30, 32, ...
    with catcher.installed():
        stopped = train(run_dir=str(tmp_path / "run"), signals=catcher, steps_per_loop=8,
                        extra_actions=[SignalAtStep(24, signal.SIGTERM)], **_kw(two_cpu_strategy))
    assert stopped["status"] == "interrupted" and stopped["epochs"] == []
    resumed = train(run_dir=str(tmp_path / "run"), steps_per_loop=8, **_kw(two_cpu_strategy))
    assert comparable(resumed) == comparable(expected)


def test_steps_per_loop_is_checked():
    from keras_largebatch.errors import UserInputError

    for bad in (0, -1, 2.5, "8", "AUTO", None, True):
        with pytest.raises(UserInputError, match="steps_per_loop"):
            train(run_dir="/nonexistent/never", steps_per_loop=bad, dry_run=True)


def test_ba_momentum_chunks_in_one_call(tmp_path, two_cpu_strategy):
    """BA-Momentum's chunk step decides in-graph, so a loop of chunks is the same algorithm: the
    same updates and batches, the loss to float round-off. Not bitwise: its per-example
    statistics compile differently inside the loop (measured: train loss 1.21658 vs 1.21743
    after 64 chunks); two runs with the same K are bitwise equal."""
    from keras_largebatch.optimizers import BAMomentum
    from keras_largebatch.training.components import Components

    components = Components().replace(optimizers={
        "ba_momentum": lambda **kw: BAMomentum(min_increment=32, max_batch_size=256, **kw)})
    kw = dict(dataset=fashion_subset(), model_options={"filters": (8, 16), "dropout": 0.25},
              optimizer="ba_momentum", learning_rate=0.05, batch_size=32, epochs=1,
              checkpoint_every_steps=0, deterministic=True, strategy=two_cpu_strategy,
              verbose=False, components=components)
    one = train(run_dir=str(tmp_path / "k1"), **kw)["epochs"][0]
    many = [train(run_dir=str(tmp_path / f"k16_{i}"), steps_per_loop=16, **kw)
            for i in range(2)]
    assert comparable(many[0]) == comparable(many[1])
    got = many[0]["epochs"][0]
    assert got["ba/updates_per_epoch"] == one["ba/updates_per_epoch"] > 0
    assert got["ba/mean_batch_size"] == one["ba/mean_batch_size"]
    assert got["train_loss"] == pytest.approx(one["train_loss"], rel=1e-2)


def test_accumulation_in_one_call_equals_one_per_call(tmp_path, two_cpu_strategy):
    kw = _kw(two_cpu_strategy, max_per_replica_batch=16)
    one = train(run_dir=str(tmp_path / "k1"), **kw)
    many = train(run_dir=str(tmp_path / "k8"), steps_per_loop=8, **kw)
    assert comparable(many) == comparable(one)


def test_auto_runs_many_updates_per_call_with_the_weights_of_one(
        one_per_call, tmp_path, two_cpu_strategy, monkeypatch):
    """'auto' (the default, training/loop_length.py) sizes calls by the clock: after the first
    call it runs several updates per call, and the weights are still bitwise those of one
    update per call. (The target call time is raised to 10 s here, so that a loaded machine
    cannot make every call a single update.)"""
    from keras_largebatch.training import loop_length
    from keras_largebatch.training.steps.train_step import TrainStep

    monkeypatch.setattr(loop_length, "TARGET_CALL_SECONDS", 10.0)

    expected, seen_k1 = one_per_call
    calls = []
    real = TrainStep.run_updates
    monkeypatch.setattr(TrainStep, "run_updates",
                        lambda self, it, k: (calls.append(k), real(self, it, k))[1])
    epoch_ends = EpochEnds()  # a user action content with call boundaries keeps 'auto'
    got = train(run_dir=str(tmp_path / "run"), extra_actions=[epoch_ends],
                **_kw(two_cpu_strategy))
    assert comparable(got) == comparable(expected)
    assert epoch_ends.seen == [(32, 0), (48, 1)]
    assert sum(calls) == len([s for s in seen_k1 if not s[2]]) == 48  # all, by the loop function
    assert max(calls) > 1 and calls[0] == 1  # the first call (tracing) measures long
    # never past the boundaries every 10 and 12 updates, nor an epoch end (32, 48)
    ends = list(itertools.accumulate(calls))
    assert {10, 12, 20, 24, 30, 32, 36, 40, 48} <= set(ends)


def test_auto_means_one_where_k_would_change_numbers_or_actions():
    from types import SimpleNamespace

    from keras_largebatch.training.loop_length import resolve

    exact, inexact = SimpleNamespace(exact_for_any_k=True), SimpleNamespace(exact_for_any_k=False)
    assert resolve("auto", exact, user_actions=False) == "auto"
    assert resolve("auto", inexact, user_actions=False) == 1   # BA-Momentum's chunk step
    assert resolve("auto", exact, user_actions=True) == 1      # user actions: every update
    # workers end calls at the same updates (the preemption sync is a collective per call)
    assert resolve("auto", exact, user_actions=False, multi_worker=True) == 1
    assert resolve(4, exact, user_actions=False, multi_worker=True) == 4
    assert resolve(8, inexact, user_actions=True) == 8         # a number is the user's choice


def test_auto_loop_length_follows_the_step_time():
    from keras_largebatch.training.loop_length import LoopLength

    auto = LoopLength("auto")
    assert auto.next_k() == 1
    auto.observe(1, 2.5)            # tracing: 2.5 s for one update
    assert auto.next_k() == 1
    auto.observe(4, 0.02)           # 5 ms per update: 0.1 s / 5 ms = 20
    assert auto.next_k() == 20
    auto.observe(20, 0.3)           # 15 ms per update: floor(6.67) = 6
    assert auto.next_k() == 6
    auto.observe(6, 6e-6)           # 1 us per update: capped
    assert auto.next_k() == 1000
    fixed = LoopLength(8)
    fixed.observe(8, 100.0)
    assert fixed.next_k() == 8 and fixed.loops and not LoopLength(1).loops


def test_noise_scale_probe_in_one_call_equals_one_per_call(tmp_path):
    """The gradient-noise-scale probe (goodput/noise_scale.py) keeps its statistics in-graph,
    so 'auto' may loop it: K = 8 gives the weights and the epoch records of K = 1."""
    kw = dict(dataset=fashion_subset(), model_options={"filters": (8, 16), "dropout": 0.25},
              optimizer="momentum", learning_rate=0.05, epochs=2, batch_size=64,
              log_every_steps=10, checkpoint_every_steps=12, deterministic=True, verbose=False,
              gradient_noise_scale=True)
    one = train(run_dir=str(tmp_path / "k1"), steps_per_loop=1, **kw)
    many = train(run_dir=str(tmp_path / "k8"), steps_per_loop=8, **kw)
    assert comparable(many) == comparable(one)
    assert any(k.startswith("noise_scale/") for k in one["epochs"][-1])  # it did measure
