"""The papers' metrics of one run, computed from its results.json.

    from keras_largebatch.studies.metrics import METRICS, run_metrics
    m = run_metrics(read_results(run_dir), loss_upper_bound=100.0)
    m["median_last5_test_accuracy"], m["status"], m["diverged_epoch"]

No command of its own: `python -m keras_largebatch.studies.sweep` writes these into summary.csv
/ summary.md and `python -m keras_largebatch.studies.plot` scores runs with them. A study names
its headline metric with `sweep.metric` (one of METRICS).
"""

from __future__ import annotations

import math
import statistics

from keras_largebatch.studies import results as rs
from keras_largebatch.studies.results import finite, number

# name -> (what the papers call it, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "final_test_accuracy": ("test accuracy after the last epoch", True),
    "best_test_accuracy": ("best test accuracy over epochs (seed 002 Table 1)", True),
    "median_last5_test_accuracy": ("median test accuracy of the final 5 epochs (seed 001)", True),
    "lowest_test_error": ("lowest test error over epochs (seed 000)", False),
    "final_train_loss": ("training loss after the last epoch: on the whole training set with "
                         "train.eval_train_set, else the epoch's running mean (seed 002)", False),
    "epoch_time_s": ("median wall time per epoch, s (seed 000 Table 1)", False),
    "update_time_ms": ("median time per update (forward + backward + step), ms", False),
    # With train.validation_examples: a study selects its LR on the first, reports the second.
    "best_validation_accuracy": ("best accuracy over epochs on the held-out validation split "
                                 "(train.validation_examples): what a study selects on", True),
    "test_accuracy_at_best_validation": ("test accuracy at the epoch of best validation "
                                         "accuracy (first of a tie): what a study reports",
                                         True),
}

# A metric a study selects on, and the one it then reports at that choice.
REPORTED_AT_CHOICE = {"best_validation_accuracy": "test_accuracy_at_best_validation"}


def headline(metric: str) -> list[str]:
    """The study's metric, then what it reports at the choice the metric makes (if any)."""
    return [metric] + ([REPORTED_AT_CHOICE[metric]] if metric in REPORTED_AT_CHOICE else [])


def loss_bad(epoch: dict, bound: float | None) -> bool:
    """Whether an epoch's training loss is non-finite or above the study's bound."""
    loss = number(epoch.get(rs.TRAIN_LOSS))
    return loss is not None and (not math.isfinite(loss) or (bound is not None and loss > bound))


def diverged_epoch(results: dict, epochs: list[dict], bound: float | None) -> int | None:
    """The epoch a run diverged in: the loop's own record (`diverged_epoch`, else
    `divergence.epoch`), else the first epoch with a bad loss, else the last epoch."""
    if number(results.get(rs.DIVERGED_EPOCH)) is not None:
        return int(results[rs.DIVERGED_EPOCH])
    info = results.get(rs.DIVERGENCE)
    if isinstance(info, dict) and number(info.get(rs.EPOCH)) is not None:
        return int(info[rs.EPOCH])
    for e in epochs:
        if loss_bad(e, bound):
            return int(number(e.get(rs.EPOCH)) or 0) or None
    if not epochs:
        return None
    last = number(epochs[-1].get(rs.EPOCH))
    return int(last) if last is not None else len(epochs)


def _update_time_ms(epoch: dict) -> float | None:
    batch, rate = number(epoch.get(rs.BATCH_SIZE)), number(epoch.get(rs.SAMPLES_PER_SECOND))
    return batch / rate * 1e3 if batch is not None and rate else None


def run_metrics(results: dict, *, loss_upper_bound: float | None = None) -> dict:
    """status, diverged_epoch, epochs and every METRICS value of one results.json."""
    epochs = rs.epoch_records(results)
    status = str(results.get(rs.STATUS, "unknown"))
    bad_epoch = diverged_epoch(results, epochs, loss_upper_bound)
    if status == rs.COMPLETED and any(loss_bad(e, loss_upper_bound) for e in epochs):
        status = rs.DIVERGED
    acc = finite(e.get(rs.TEST_ACCURACY) for e in epochs)
    times = finite(e.get(rs.EPOCH_TIME_S) for e in epochs)
    updates = finite(_update_time_ms(e) for e in epochs)
    # Seed 002 reports the loss on the whole training set (train.eval_train_set = True);
    # otherwise the running mean over the last epoch's updates.
    chosen = rs.validation_choice(epochs)  # {} without a validation split
    last_loss = (number(epochs[-1].get(rs.FULL_TRAIN_LOSS, epochs[-1].get(rs.TRAIN_LOSS)))
                 if epochs else None)
    return {
        "status": status,
        "diverged_epoch": bad_epoch if status == rs.DIVERGED else None,
        "epochs": len(epochs),
        "final_test_accuracy": number(epochs[-1].get(rs.TEST_ACCURACY)) if epochs else None,
        "best_test_accuracy": max(acc) if acc else None,
        "median_last5_test_accuracy": (
            statistics.median(finite(e.get(rs.TEST_ACCURACY) for e in epochs[-5:])
                              or [math.nan])
            if epochs else None),
        "lowest_test_error": 1.0 - max(acc) if acc else None,
        "final_train_loss": last_loss,
        "epoch_time_s": statistics.median(times) if times else None,
        "update_time_ms": statistics.median(updates) if updates else None,
        "best_validation_accuracy": number(chosen.get(rs.BEST_VALIDATION_ACCURACY)),
        "test_accuracy_at_best_validation": number(chosen.get(rs.TEST_AT_BEST_VALIDATION)),
    }
