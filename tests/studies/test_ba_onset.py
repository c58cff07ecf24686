"""studies/ba_onset.py: Eq. 7's a and the onset statistics against hand computations, the
figure, and its CLI's bad input."""

import math

import numpy as np
import pytest

from keras_largebatch.optimizers import ba_math
from keras_largebatch.studies import ba_onset

from ..cli import assert_one_error_line
from .test_plot import _epochs, _write_run


def test_a_by_hand():
    # (0.5 - 0.1 - 0.1 * 2) * sqrt(16) / (0.1 * 4) = 0.2 * 4 / 0.4 = 2
    assert ba_onset.eq7_a(0.5, 0.1, 2.0, 4.0, 16, 0.1) == pytest.approx(2.0)
    assert ba_onset.eq7_a(0.5, 0.0, 1.0, 0.0, 32, 0.1) == math.inf  # no noise: a unbounded


def test_eq7_sees_the_batch_only_through_the_noise_term():
    """The module's premise, on the library's own Eq. 7: E_m[s'] is the same wherever
    eta sigma / sqrt(m) (so a) is the same: sigma x2 with m x4 changes nothing."""
    one = ba_math.expected_next_state(0.3, 0.0, 1.5, 16.0, 16, 0.05)  # a = 0.225 / 0.2
    other = ba_math.expected_next_state(0.3, 0.0, 1.5, 32.0, 64, 0.05)
    assert one == pytest.approx(other, rel=1e-12)
    assert ba_math.expected_next_state(0.3, 0.0, 1.5, 16.0, 64, 0.05) != pytest.approx(one)


def test_the_learning_rate_of_each_update_is_its_epochs():
    epochs = [{"ba/updates_per_epoch": 3, "learning_rate": 0.1},
              {"ba/updates_per_epoch": 2, "learning_rate": 0.05}]
    assert list(ba_onset.lr_per_update([1, 2, 3, 4, 5], epochs)) == [0.1, 0.1, 0.1, 0.05, 0.05]


def _ba_epochs(lrs, counts):
    epochs = _epochs([0.8] * len(lrs))
    for e, lr, n in zip(epochs, lrs, counts, strict=True):
        e.update({"learning_rate": lr, "ba/updates_per_epoch": n})
    return epochs


# Four updates, LR 0.1 then 0.05 (epochs of 2 updates); s, mu, sigma, m per update.
S, MU, SIGMA, M = [1.0, 0.5, 0.2, 0.1], [2.0, 1.0, 1.0, 0.5], [4.0, 4.0, 2.0, 2.0], [32, 32, 64, 32]
LR = [0.1, 0.1, 0.05, 0.05]


@pytest.fixture(scope="module")
def onset_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("onset")
    scalars = {"ba/s": S, "ba/mu": MU, "ba/sigma": SIGMA, "ba/batch_size": M}
    for seed in (0, 1):
        _write_run(root / f"ba__seed={seed}", epochs=_ba_epochs([0.1, 0.05], [2, 2]),
                   scalars={k: list(enumerate(v, 1)) for k, v in scalars.items()})
    _write_run(root / "mini32__seed=0", epochs=_epochs([0.8] * 2))  # no ba/ scalars: left out
    return root


def test_onset_statistics_by_hand(onset_sweep):
    series = ba_onset.onset_series(ba_onset.Run(str(onset_sweep / "ba__seed=0")))
    a = [(s - lr * mu) * math.sqrt(m) / (lr * sg) for s, mu, sg, m, lr in zip(S, MU, SIGMA, M, LR)]
    assert series["a"] == pytest.approx(a)
    assert series["noise"] == pytest.approx([lr * sg / math.sqrt(m)
                                             for sg, m, lr in zip(SIGMA, M, LR)])
    assert series["gap"] == pytest.approx([s - lr * mu for s, mu, lr in zip(S, MU, LR)])
    stats = ba_onset.onset_stats(series, m0=32, window=2)
    assert stats["updates"] == 4 and stats["first_growth"] == 3 and stats["grown"] == 0.25
    # a by hand: 0.8 sqrt(32) / 0.4 = 8 sqrt 2, 0.4 sqrt(32) / 0.4 = 4 sqrt 2,
    # 0.15 sqrt(64) / 0.1 = 12, 0.075 sqrt(32) / 0.1 = 3 sqrt 2; the third update grew
    assert a == pytest.approx([8 * math.sqrt(2), 4 * math.sqrt(2), 12.0, 3 * math.sqrt(2)])
    assert stats["abs_a_grown"] == pytest.approx(12.0)
    assert stats["abs_a_kept"] == pytest.approx(4 * math.sqrt(2))  # median of 11.3, 5.7, 4.2
    assert stats["grown_a_lt_10"] == 0.0 and stats["grown_a_ge_100"] is None
    assert stats["rebound_grown"] == 0.0 and stats["rebound_kept"] == 0.0  # every gap > 0
    assert stats["loss_late"] == pytest.approx(0.15)
    assert ba_onset.onset_series(ba_onset.Run(str(onset_sweep / "mini32__seed=0"))) is None


def test_report_is_mean_over_seeds_with_a_figure_per_run(onset_sweep):
    text = ba_onset.report(str(onset_sweep), m0=32, window=2)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in text.splitlines()}
    assert "mini32" not in rows
    assert rows["ba"][:3] == ["2", "4 +- 0", "3 +- 0"]  # two seeds, 4 updates, first growth 3
    assert rows["ba"][9] == "0.000 +- 0.000"  # rebound_kept
    for seed in (0, 1):
        assert (onset_sweep / "ba_onset" / f"ba__seed={seed}.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "expected one sweep folder"),
    (["{sweep}", "--window=0"], "--window=0"),
    (["{sweep}", "--m0=0"], "must be positive"),
    (["{empty}"], "no finished BA-Momentum runs"),
])
def test_cli_bad_input_is_one_error_line(onset_sweep, tmp_path, args, message):
    paths = {"sweep": onset_sweep, "missing": tmp_path / "nope", "empty": tmp_path}
    assert_one_error_line("keras_largebatch.studies.ba_onset",
                          [a.format(**paths) for a in args], message)


def test_the_rebound_is_a_negative_gap():
    """An update whose expected decrease eta mu overshoots the floor (s - S* < eta mu)."""
    series = {"update": np.array([1.0, 2.0]), "s": np.array([0.1, 0.1]),
              "m": np.array([64.0, 32.0]), "gap": np.array([-0.05, 0.05]),
              "a": np.array([-20.0, 200.0])}
    stats = ba_onset.onset_stats(series, m0=32, window=1)
    assert stats["rebound_grown"] == 1.0 and stats["rebound_kept"] == 0.0
    assert stats["abs_a_grown"] == 20.0 and stats["grown_a_ge_100"] == 0.0
