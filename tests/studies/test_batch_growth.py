"""studies/batch_growth.py: the boom statistics against hand counts, and its CLI's bad input."""


import pytest

from keras_largebatch.studies import batch_growth

from ..cli import assert_one_error_line
from .test_plot import _epochs, _write_run


def test_growth_stats_by_hand():
    sizes = [32, 32, 32, 64, 32, 96, 32, 64]  # grown at updates 4, 6, 8
    losses = [1.0, 0.5, 0.4, 0.3, 0.2, 0.1, float("nan")]
    s = batch_growth.growth_stats(sizes, losses, m0=32, last_updates=4)
    assert s["grown"] == pytest.approx(3 / 8)
    assert s["grown_late"] == pytest.approx(2 / 4)  # 32, 96, 32, 64
    assert s["max_batch"] == 96
    assert s["first_growth"] == 4
    assert s["loss_last5"] == pytest.approx((0.5 + 0.4 + 0.3 + 0.2 + 0.1) / 5)  # NaN dropped
    assert s["loss_min"] == pytest.approx(0.1)


def test_a_run_that_never_grew_has_no_first_growth():
    s = batch_growth.growth_stats([32, 32], [0.3], m0=32)
    assert s["grown"] == 0.0 and s["first_growth"] is None and s["max_batch"] == 32


@pytest.fixture(scope="module")
def boom_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("boom")
    for seed, growth in ((0, [32, 64, 32, 32]), (1, [32, 32, 128, 64])):
        _write_run(root / f"ba__seed={seed}", epochs=_epochs([0.8] * 6, losses=[0.6] * 6),
                   scalars={"ba/batch_size": list(enumerate(growth, 1))})
        _write_run(root / f"mini32__seed={seed}", epochs=_epochs([0.8] * 6),
                   config="train.batch_size = 32\n")
    _write_run(root / "ba__seed=2", epochs=_epochs([0.1]), status="running")  # not counted
    return root


def test_table_is_mean_and_std_over_completed_seeds(boom_sweep):
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:]
            for line in batch_growth.table(str(boom_sweep), m0=32, last_updates=2).splitlines()}
    ba, mini = rows["ba"], rows["mini32"]
    assert ba[0] == "2"  # two completed seeds; the running one left out
    # grown: 1/4 and 2/4 -> mean 0.375, sample std 0.177; last two updates: 0 and 1
    assert ba[1] == "0.375 +- 0.177" and ba[2] == "0.500 +- 0.707"
    assert ba[3] == "96 +- 45"  # max batch 64 and 128
    assert ba[4] == "2 +- 1"  # first growth at update 2 and 3
    assert mini[1] == "0.000 +- 0.000" and mini[4] == "none"
    # _epochs' default losses 2/(i+1): the mean of epochs 2..6
    assert mini[5] == f"{sum(2 / (i + 1) for i in range(1, 6)) / 5:.4f} +- 0.0000"


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "expected one sweep folder"),
    (["{sweep}", "--m0=zero"], "--m0=zero"),
    (["{sweep}", "--m0=-4"], "--m0=-4.0: must be positive"),
    (["{sweep}", "--last_updates=0"], "--last_updates=0"),
    (["{sweep}", "--bogus=1"], "flag 'bogus'"),
    (["{empty}"], "no completed run folders"),
])
def test_cli_bad_input_is_one_error_line(boom_sweep, tmp_path, args, message):
    paths = {"sweep": boom_sweep, "missing": tmp_path / "nope", "empty": tmp_path}
    assert_one_error_line("keras_largebatch.studies.batch_growth",
                          [a.format(**paths) for a in args], message)


def test_loss_is_the_whole_training_set_when_every_epoch_has_it(tmp_path):
    epochs = _epochs([0.8] * 5, losses=[0.5] * 5)
    for e, full in zip(epochs, [0.4, 0.3, 0.2, 0.1, 0.05], strict=True):
        e["full_train_loss"] = full
    run = _write_run(tmp_path / "ba__seed=0", epochs=epochs,
                     scalars={"ba/batch_size": [(1, 32), (2, 64)]})
    stats = batch_growth.run_stats(batch_growth.Run(str(run)), m0=32, last_updates=1000)
    assert stats["loss_last5"] == pytest.approx((0.4 + 0.3 + 0.2 + 0.1 + 0.05) / 5)
    assert stats["loss_min"] == pytest.approx(0.05)
    del epochs[0]["full_train_loss"]  # one epoch without it: the running means, as metrics does
    run = _write_run(tmp_path / "ba__seed=1", epochs=epochs)
    stats = batch_growth.run_stats(batch_growth.Run(str(run)), m0=32, last_updates=1000)
    assert stats["loss_last5"] == pytest.approx(0.5)


def test_small_losses_keep_their_digits(tmp_path):
    for seed, loss in ((0, 2.0e-6), (1, 4.0e-6)):
        _write_run(tmp_path / f"ba__seed={seed}", epochs=_epochs([0.8] * 5, losses=[loss] * 5),
                   scalars={"ba/batch_size": [(1, 32)]})
    row = batch_growth.table(str(tmp_path), m0=32).splitlines()[2].split(" | ")
    assert row[6] == "3e-06 +- 1.414e-06"  # loss_last5: mean 3e-6, sample std sqrt(2) e-6
