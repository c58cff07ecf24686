"""GoodputBatch and AdaScale in the framework loop (in-process, real Fashion-MNIST, two
replicas): the decisions drive the batch phases with one trace, land in history and
TensorBoard, AdaScale's LR is the gain by hand, and a run stopped after a decision resumes
bitwise (train.deterministic), replaying the decision from the checkpoint."""

import signal

import pytest

from keras_largebatch.goodput.adascale import adascale_gain
from keras_largebatch.goodput.batch import GoodputBatch
from keras_largebatch.training.loop import train
from keras_largebatch.training.signals import SignalCatcher

from ..faults import SignalAtStep
from ..training.helpers import comparable, fashion_subset


def _kw(strategy):
    # A fixed cost per update of 50 ms against 10 us per sample: goodput favours large batches
    # as soon as the noise scale is measured (B* = sqrt(a W B_noise / c)).
    return dict(dataset=fashion_subset(), model_options={"filters": (8, 16), "dropout": 0.0},
                optimizer="momentum", learning_rate=0.05, epochs=3, lr_scaling="adascale",
                batch_schedule=GoodputBatch(64, 512, step_time_model=(0.05, 1e-5)),
                checkpoint_every_steps=0, deterministic=True, strategy=strategy,
                verbose=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, two_cpu_strategy):
    run_dir = tmp_path_factory.mktemp("goodput") / "ref"
    return run_dir, train(run_dir=str(run_dir), **_kw(two_cpu_strategy))


def test_decisions_drive_the_batch_with_one_trace(reference):
    run_dir, results = reference
    epochs = results["epochs"]
    assert results["batch_size_per_epoch"][0] == 64
    for before, after in zip(epochs, epochs[1:]):
        decision = before["goodput_decision"]
        assert decision["batch_size"] == after["batch_size"]
        assert decision["epoch"] == before["epoch"]   # 0-based next epoch = 1-based this one
        assert decision["b_noise"] == pytest.approx(before["noise_scale/b_simple"])
    assert "goodput_decision" not in epochs[-1]       # no decision after the last epoch
    assert results["batch_size_per_epoch"][1] > 64    # it grew: B_noise >> a W / c away
    assert results["trace_count"] == 1                # a new batch is a new pipeline only


def test_adascale_lr_is_the_gain_of_the_measured_statistics(reference):
    _, results = reference
    first, second = results["epochs"][:2]
    assert first["learning_rate"] == pytest.approx(0.05)   # batch 64 = B0: gain 1
    gain = adascale_gain(second["batch_size"] / 64, first["noise_scale/grad_sqr"],
                         first["noise_scale/grad_trace"], 64)
    assert second["learning_rate"] == pytest.approx(0.05 * float(gain), rel=1e-5)
    assert 1.0 < float(gain) <= second["batch_size"] / 64


def test_stopped_after_a_decision_resumes_bitwise(reference, tmp_path, two_cpu_strategy):
    _, expected = reference
    steps_first = 2048 // 64
    catcher = SignalCatcher()
    with catcher.installed():  # SIGTERM in epoch 2, after the first decision
        stopped = train(run_dir=str(tmp_path / "run"), signals=catcher,
                        extra_actions=[SignalAtStep(steps_first + 2, signal.SIGTERM)],
                        **_kw(two_cpu_strategy))
    assert stopped["status"] == "interrupted" and len(stopped["epochs"]) == 1
    resumed = train(run_dir=str(tmp_path / "run"), **_kw(two_cpu_strategy))
    assert resumed["status"] == "completed"
    assert comparable(resumed) == comparable(expected)   # incl. weights_sha256, decisions


def test_online_decision_uses_the_measured_all_reduce(tmp_path, two_cpu_strategy):
    """No step_time_model: on 2 replicas the decision fits the epoch's step time with the
    measured all-reduce as its constant (training/allreduce_timing.py); recomputed by hand from
    the numbers history.json records."""
    kw = {**_kw(two_cpu_strategy), "epochs": 2, "deterministic": False,
          "batch_schedule": GoodputBatch(64, 512)}
    results = train(run_dir=str(tmp_path / "run"), **kw)
    first = results["epochs"][0]
    fixed, step = first["allreduce_time_s"], first["step_time_s"]
    assert 0 < fixed < 60 and step > 0
    a = max(min(fixed, 0.9 * step), step / 2)        # throughput.fit_online, by hand
    c = (step - a) / 32                               # per replica: 64 / 2

    def goodput(b):
        b_noise = first["noise_scale/b_simple"]
        return b / (a + c * b / 2) * (b_noise + 64) / (b_noise + b)

    candidates = GoodputBatch(64, 512).candidates(granularity=2)
    decision = first["goodput_decision"]
    assert decision["batch_size"] == max(candidates, key=goodput)
    assert decision["throughput"] == pytest.approx(
        decision["batch_size"] / (a + c * decision["batch_size"] / 2), rel=1e-6)
    assert results["batch_size_per_epoch"][1] == decision["batch_size"]
