"""How a batch-adaptive run grew its batch (seed 002 Section 4.4, the "batch size boom"), per run
and as mean +- std over the seeds of each grid point.

    python -m keras_largebatch.studies.batch_growth runs/ba_boom [--m0=32] [--last_updates=1000]

prints one markdown table: for every grid point (studies/seeds.py) the number of seeds and, as
mean +- sample std over them,

    grown           fraction of all updates whose batch was above m0
    grown_late      the same over the last `last_updates` updates of the run
    max_batch       the largest batch of any update
    first_growth    the update count at the first batch above m0 (runs that never grew: none)
    loss_last5      mean training loss over the last 5 epochs: on the whole training set
                    (`full_train_loss`, train.eval_train_set) when every epoch has it, else
                    the epochs' running mean (`train_loss`), as metrics.final_train_loss
    loss_min        the lowest per-epoch training loss

The per-update batch sizes are the `ba/batch_size` TensorBoard scalar (training/steps/
ba_step.py logs one per update); a fixed-batch run (no such tag) counts as never grown.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import results as rs
from keras_largebatch.studies.run_data import Run
from keras_largebatch.studies.seeds import group_by_point, mean_std
from keras_largebatch.studies.summary import cell

COLUMNS = ("grown", "grown_late", "max_batch", "first_growth", "loss_last5", "loss_min")


def growth_stats(batch_sizes: Sequence[float], train_losses: Sequence[float], *, m0: float,
                 last_updates: int = 1000) -> dict:
    """The COLUMNS of one run from its per-update batch sizes and per-epoch training losses."""
    sizes = np.asarray(batch_sizes, np.float64)
    losses = np.asarray([x for x in train_losses if x is not None and np.isfinite(x)], np.float64)
    grown = sizes > m0
    first = int(np.argmax(grown)) + 1 if grown.any() else None
    return {
        "grown": float(grown.mean()) if sizes.size else 0.0,
        "grown_late": float(grown[-last_updates:].mean()) if sizes.size else 0.0,
        "max_batch": float(sizes.max()) if sizes.size else None,
        "first_growth": first,
        "loss_last5": float(losses[-5:].mean()) if losses.size else None,
        "loss_min": float(losses.min()) if losses.size else None,
    }


def run_stats(run: Run, *, m0: float, last_updates: int) -> dict:
    """growth_stats of one run folder (Run.batch_size_per_update: the per-update scalar, else
    the batch of each epoch; a run with neither counts as its configured batch)."""
    curve = run.batch_size_per_update()
    sizes = list(curve[1]) if curve else [float(run.batch_size or m0)]
    key = rs.FULL_TRAIN_LOSS if all(rs.FULL_TRAIN_LOSS in e for e in run.epochs) else rs.TRAIN_LOSS
    losses = [rs.number(e.get(key)) for e in run.epochs]
    return growth_stats(sizes, losses, m0=m0, last_updates=last_updates)


def _number(col: str, value: float) -> str:
    """A loss as summary.md writes metrics (4 significant digits below 0.001), shares to 3
    decimals, counts whole."""
    if col.startswith("loss"):
        return cell(float(value), True)
    return format(value, ".3f" if col.startswith("grown") else ".0f")


def table(sweep_dir: str, *, m0: float = 32, last_updates: int = 1000) -> str:
    """The markdown table of every completed run folder of `sweep_dir`, by grid point."""
    names = sorted(n for n in os.listdir(sweep_dir)
                   if (rs.read_results(os.path.join(sweep_dir, n)) or {}).get(rs.STATUS)
                   == rs.COMPLETED)
    if not names:
        raise UserInputError(f"no completed run folders in {sweep_dir!r}: run the sweep first")
    lines = ["| point | seeds | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for point, runs in group_by_point(names).items():
        stats = [run_stats(Run(os.path.join(sweep_dir, n)), m0=m0, last_updates=last_updates)
                 for n in runs]
        cells = []
        for col in COLUMNS:
            mean, std, n = mean_std(s[col] for s in stats)
            if mean is None:
                cells.append("none")
                continue
            cells.append(_number(col, mean)
                         + (f" +- {_number(col, std)}" if std is not None else "")
                         + (f" ({n})" if n != len(stats) else ""))
        lines.append(f"| {point} | {len(stats)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def folder_main(argv: Sequence[str], command: str, report: Callable[[str], str]) -> int:
    """A command line that reads one sweep folder and prints `report(folder)` (this module's
    and ba_onset's): bad input is one `error:` line and exit status 2."""
    try:
        if len(argv) != 2 or not os.path.isdir(argv[1]):
            raise UserInputError(f"expected one sweep folder, got {list(argv[1:])!r}: "
                                 f"python -m keras_largebatch.studies.{command} runs/<study>")
        print(report(argv[1]))
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def define_m0_flag() -> None:
    """--m0, the initial batch of a batch-adaptive run (this module's and ba_onset's)."""
    from absl import flags

    flags.DEFINE_float("m0", 32, "The initial batch: an update with a larger batch has grown.")
    flags.register_validator("m0", lambda m0: m0 > 0, "must be positive, e.g. --m0=32")


def main(argv: Sequence[str]) -> int:
    from absl import flags

    return folder_main(argv, "batch_growth", lambda folder: table(
        folder, m0=flags.FLAGS.m0, last_updates=flags.FLAGS.last_updates))


def run() -> None:
    from absl import app, flags

    from keras_largebatch import cli_flags

    define_m0_flag()
    flags.DEFINE_integer("last_updates", 1000, "grown_late counts the last this many updates.",
                         lower_bound=1)
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli_flags.parse)


if __name__ == "__main__":
    run()
