"""When BA-Momentum starts to grow its batch, against Eq. 7's noise term (seed 002 Eqs. 7-9).

    python -m keras_largebatch.studies.ba_onset runs/ba_growth_long [--m0=32] [--window=1000]

Eq. 7's expected next state depends on the batch m only through

    a = (s - S* - eta mu) sqrt(m) / (eta sigma)

(s: the loss on the batch, S*: BAMomentum.loss_floor, mu and sigma: the mean and standard
deviation of the moving step, eta: the learning rate). Where the noise term eta sigma / sqrt(m)
is negligible against the gap |s - S* - eta mu| (|a| >> 1), a larger batch buys nothing and
Eq. 9 keeps m0; growth can pay only once the noise term comes within reach of the gap (|a| of
order 1; the gap is negative, the "rebound" of Eq. 6, when the step's expected decrease
overshoots the floor). For every run of the sweep folder that logged BA-Momentum's per-update
scalars (`ba/s`, `ba/mu`, `ba/sigma`, `ba/batch_size`, training/steps/ba_step.py; the values
of the batch each update was made with) this draws the gap against the noise term, one dot per
update, grown updates in black and |a| = 1 dashed (`<sweep_dir>/ba_onset/<run>.png`), and
prints one markdown table, per grid point as mean +- sample std over its seeds:

    updates         updates the run made
    first_growth    the first update with m > m0 (runs that never grew: none)
    grown           fraction of the updates with m > m0
    abs_a_grown     median |a| over the grown updates
    abs_a_kept      median |a| over the updates that kept m0
    grown_a_lt_10   fraction grown among the updates with |a| < 10
    grown_a_ge_100  fraction grown among the updates with |a| >= 100
    rebound_grown   fraction of the grown updates whose gap is negative (s - S* < eta mu)
    rebound_kept    the same among the updates that kept m0
    loss_late       median s over the last --window updates

eta per update is the learning rate its epoch recorded (results.json), placed by the epochs'
`ba/updates_per_epoch`: exact for a constant LR and for schedules that change at epoch ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import results as rs
from keras_largebatch.studies.batch_growth import define_m0_flag, folder_main
from keras_largebatch.studies.figures import plot_ba_onset
from keras_largebatch.studies.run_data import Run
from keras_largebatch.studies.seeds import group_by_point, mean_std

COLUMNS = ("updates", "first_growth", "grown", "abs_a_grown", "abs_a_kept", "grown_a_lt_10",
           "grown_a_ge_100", "rebound_grown", "rebound_kept", "loss_late")
TAGS = ("ba/s", "ba/mu", "ba/sigma", "ba/batch_size")
UPDATES_PER_EPOCH = "ba/updates_per_epoch"


def eq7_a(s, loss_floor, mu, sigma, m, learning_rate) -> np.ndarray:
    """a = (s - S* - eta mu) sqrt(m) / (eta sigma) of Eq. 7 (inf where sigma = 0)."""
    s, mu, sigma, m, lr = (np.asarray(v, np.float64) for v in (s, mu, sigma, m, learning_rate))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sigma > 0, (s - loss_floor - lr * mu) * np.sqrt(m) / (lr * sigma),
                        np.inf)


def lr_per_update(updates: Sequence[int], epochs: Sequence[dict]) -> np.ndarray:
    """The learning rate of the epoch each update (1-based) fell in."""
    counts = [rs.number(e.get(UPDATES_PER_EPOCH)) for e in epochs]
    rates = [rs.number(e.get(rs.LEARNING_RATE)) for e in epochs]
    if not epochs or None in counts or None in rates:
        raise UserInputError("a BA run's epochs must record ba/updates_per_epoch and "
                             "learning_rate (results.json); rerun it with this version")
    ends = np.cumsum(counts)
    index = np.minimum(np.searchsorted(ends, np.asarray(updates, np.float64), side="left"),
                       len(epochs) - 1)
    return np.asarray(rates, np.float64)[index]


def onset_series(run: Run) -> dict[str, np.ndarray] | None:
    """Per update of one BA run: update, s, mu, sigma, m, eta, gap, noise, a; None if not BA."""
    if not all(tag in run.scalars for tag in TAGS):
        return None
    steps = run.scalars["ba/s"][0]
    values = {}
    for tag in TAGS:
        tag_steps, tag_values = run.scalars[tag]
        if not np.array_equal(tag_steps, steps):
            raise UserInputError(f"{run.path}: {tag} and ba/s were logged at different updates; "
                                 "the run's TensorBoard events are damaged")
        values[tag.split("/")[1]] = np.asarray(tag_values, np.float64)
    lr = lr_per_update(steps, run.epochs)
    floor = float(run.config.get("BAMomentum.loss_floor", 0.0))
    m = values["batch_size"]
    return {"update": np.asarray(steps, np.float64), "s": values["s"], "mu": values["mu"],
            "sigma": values["sigma"], "m": m, "eta": lr,
            "gap": values["s"] - floor - lr * values["mu"],
            "noise": lr * values["sigma"] / np.sqrt(m),
            "a": eq7_a(values["s"], floor, values["mu"], values["sigma"], m, lr)}


def onset_stats(series: dict[str, np.ndarray], *, m0: float, window: int) -> dict:
    """The COLUMNS of one run from its onset_series."""
    grown = series["m"] > m0
    abs_a, rebound = np.abs(series["a"]), series["gap"] < 0

    def share(flags, where) -> float | None:  # fraction of `flags` among `where`
        return float(flags[where].mean()) if where.any() else None

    def median(values, where) -> float | None:
        return float(np.median(values[where])) if where.any() else None

    return {
        "updates": float(series["update"].size),
        "first_growth": float(series["update"][np.argmax(grown)]) if grown.any() else None,
        "grown": float(grown.mean()),
        "abs_a_grown": median(abs_a, grown),
        "abs_a_kept": median(abs_a, ~grown),
        "grown_a_lt_10": share(grown, abs_a < 10),
        "grown_a_ge_100": share(grown, abs_a >= 100),
        "rebound_grown": share(rebound, grown),
        "rebound_kept": share(rebound, ~grown),
        "loss_late": float(np.median(series["s"][-window:])),
    }


def _cell(col: str, mean, std, n: int, total: int) -> str:
    if mean is None:
        return "none"
    fmt = (".3f" if col.startswith(("grown", "rebound"))
           else ".0f" if col in ("updates", "first_growth") else ".3g")
    return (f"{mean:{fmt}}" + (f" +- {std:{fmt}}" if std is not None else "")
            + (f" ({n})" if n != total else ""))


def report(sweep_dir: str, *, m0: float = 32, window: int = 1000,
           figures: bool = True) -> str:
    """The markdown table of the completed BA runs of `sweep_dir` (and their figures)."""
    names = sorted(n for n in os.listdir(sweep_dir)
                   if (rs.read_results(os.path.join(sweep_dir, n)) or {}).get(rs.STATUS)
                   in rs.FINAL_STATUSES)
    lines = ["| point | seeds | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    found = 0
    for point, runs in group_by_point(names).items():
        stats = []
        for name in runs:
            series = onset_series(Run(os.path.join(sweep_dir, name)))
            if series is None:
                continue
            stats.append(onset_stats(series, m0=m0, window=window))
            if figures:
                plot_ba_onset(series["update"], series["gap"], series["noise"], series["m"],
                              os.path.join(sweep_dir, "ba_onset", f"{name}.png"), m0=m0,
                              title=f"Eq. 7's gap against eta sigma / sqrt(m): {name}")
        if not stats:
            continue
        found += len(stats)
        cells = [_cell(col, *mean_std(s[col] for s in stats), len(stats)) for col in COLUMNS]
        lines.append(f"| {point} | {len(stats)} | " + " | ".join(cells) + " |")
    if not found:
        raise UserInputError(f"no finished BA-Momentum runs in {sweep_dir!r} (runs that logged "
                             "ba/s, ba/mu, ba/sigma and ba/batch_size): run the sweep first")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    from absl import flags

    return folder_main(argv, "ba_onset", lambda folder: report(
        folder, m0=flags.FLAGS.m0, window=flags.FLAGS.window))


def run() -> None:
    from absl import app, flags

    from keras_largebatch import cli_flags

    define_m0_flag()
    flags.DEFINE_integer("window", 1000, "loss_late: the median over the last this many "
                         "updates.", lower_bound=1)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli_flags.parse)


if __name__ == "__main__":
    run()
