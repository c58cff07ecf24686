"""The one schema of results.json, the file every training run leaves in its run folder.

    from keras_largebatch.studies import results as rs
    data = rs.read_results("runs/x/learning_rate=0.1")   # None while there is no usable file
    if data is not None and data[rs.STATUS] in rs.FINAL_STATUSES: ...
    rs.write_results(run_dir, {rs.STATUS: rs.COMPLETED, rs.EPOCHS: [...], ...})

No command of its own: `python -m keras_largebatch.main` writes the file (training/loop.py, with
the fields of the action that stopped the run, e.g. training/actions/divergence.py), and
`python -m keras_largebatch.studies.sweep` / `python -m keras_largebatch.studies.plot` read it
through `read_results`. The key constants below are the names the loop writes; readers use
them instead of spelling the strings again.

Reading is tolerant in the way a sweep needs: a missing, half-written (not JSON) or non-object
file reads as None (the run is still to do, or to resume). A file that parses but whose fields
the studies compute with have the wrong type (hand-edited: `epochs` not a list, an epoch number
that is not a whole number, ...) raises a one-line `UserInputError` naming the file and the
field, so the command lines print one `error:` line instead of a traceback. Epoch records that
are not objects are skipped, and a value that is not a number reads as missing (`number`).

A leaf module: it imports nothing from keras_largebatch but `errors`, `files` and `validate`.
"""

from __future__ import annotations

import json
import math
import os
from typing import TypedDict

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.files import write_json_atomic

RESULTS_FILE = "results.json"

# ---- Top-level keys ------------------------------------------------------------------------------
STATUS = "status"                          # one of the statuses below
EPOCHS = "epochs"                          # list of per-epoch records (EpochRecord)
FINAL_TEST_ACCURACY = "final_test_accuracy"
BEST_TEST_ACCURACY = "best_test_accuracy"
BATCH_SIZE_PER_EPOCH = "batch_size_per_epoch"
WALL_TIME_S = "wall_time_s"
DIVERGENCE = "divergence"                  # {"epoch": 1-based, "step", "update", "reason", ...}
DIVERGED_EPOCH = "diverged_epoch"          # = divergence["epoch"]
WEIGHTS_SHA256 = "weights_sha256"
RESTORES = "restores"
INTERRUPTED_BY = "interrupted_by"          # signal name, e.g. "SIGTERM"

# ---- Per-epoch record keys -----------------------------------------------------------------------
EPOCH = "epoch"                            # 1-based
TRAIN_LOSS = "train_loss"                  # running mean over the epoch's updates
TRAIN_ACCURACY = "train_accuracy"
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
LEARNING_RATE = "learning_rate"
BATCH_SIZE = "batch_size"
EFFECTIVE_BATCH_SIZE = "effective_batch_size"  # batch_size x repeats (batch augmentation)
REPEATS = "repeats"
GRADIENT_NORM = "gradient_norm"
FULL_TRAIN_LOSS = "full_train_loss"        # on the whole training set (train.eval_train_set)
FULL_TRAIN_ACCURACY = "full_train_accuracy"
SAMPLES_PER_SECOND = "samples_per_second"
EPOCH_TIME_S = "epoch_time_s"
VALIDATION_LOSS = "validation_loss"        # on train.validation_examples, if held out
VALIDATION_ACCURACY = "validation_accuracy"
BEST_VALIDATION_ACCURACY = "best_validation_accuracy"
BEST_VALIDATION_EPOCH = "best_validation_epoch"                # 1-based, first of a tie
TEST_AT_BEST_VALIDATION = "test_accuracy_at_best_validation"   # the choice a study reports
STEP_TIME_S = "step_time_s"                # per update, the epoch's first update left out
REPLICAS_KEY = "replicas"                  # replicas in sync that trained the epoch
GOODPUT_DECISION = "goodput_decision"      # GoodputBatch's decision after the epoch, if any
ALLREDUCE_S = "allreduce_time_s"          # GoodputBatch: one gradient all-reduce, measured

# ---- Statuses ------------------------------------------------------------------------------------
COMPLETED = "completed"
DIVERGED = "diverged"
INTERRUPTED = "interrupted"
DRY_RUN = "dry_run"
FINAL_STATUSES = (COMPLETED, DIVERGED)  # a run with one of these is done; others are resumed


class EpochRecord(TypedDict, total=False):
    """One entry of results.json `epochs` (training/loop.py writes more keys than these)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    learning_rate: float
    batch_size: int
    effective_batch_size: int
    repeats: int
    gradient_norm: float | None
    full_train_loss: float
    full_train_accuracy: float
    samples_per_second: float
    epoch_time_s: float


class Results(TypedDict, total=False):
    """results.json as the training loop writes it (the keys the studies read, and more)."""

    status: str
    dataset: str
    model: str
    optimizer: str
    replicas: int
    epochs: list[EpochRecord]
    final_test_accuracy: float | None
    best_test_accuracy: float | None
    batch_size_per_epoch: list[int]
    wall_time_s: float
    trace_count: int
    restores: int
    weights_sha256: str
    divergence: dict
    diverged_epoch: int
    interrupted_by: str
    interrupted_by_signal: int


# ---- Numbers -------------------------------------------------------------------------------------

def number(value) -> float | None:
    """`value` as a float, or None when it is not a number (None, a word, a list, ...)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def finite(values) -> list[float]:
    """The finite numbers among `values` (NaN, infinities and non-numbers dropped)."""
    return [v for v in (number(x) for x in values) if v is not None and math.isfinite(v)]


# ---- Reading and writing -------------------------------------------------------------------------

def results_path(path: str) -> str:
    """<path>/results.json for a run folder; `path` itself otherwise."""
    return os.path.join(path, RESULTS_FILE) if os.path.isdir(path) else path


def read_results(path: str) -> Results | None:
    """results.json of a run folder (or the file itself) as a dict.

    None when the file is missing, half-written or not a JSON object; `UserInputError` when it
    parses but a field has the wrong type (see the module docstring).
    """
    file = results_path(path)
    try:
        with open(file) as f:
            data = json.load(f)  # accepts NaN / Infinity, which diverged runs contain
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    check_results(data, file)
    return data


def check_results(data: dict, where: str = RESULTS_FILE) -> None:
    """Raise a one-line `UserInputError` if a field the studies compute with has the wrong type."""
    fix = f"fix {where}, or delete its run folder to run it again"
    epochs = data.get(EPOCHS)
    if epochs is not None and not isinstance(epochs, list):
        raise UserInputError(f"{where}: {EPOCHS}={_short(epochs)} is not a list of per-epoch "
                             f"records; {fix}")
    for i, record in enumerate(epochs or []):
        if isinstance(record, dict) and record.get(EPOCH) is not None:
            validate.whole(f"{where}: {EPOCHS}[{i}].{EPOCH}", record[EPOCH], minimum=0, fix=fix)
    if data.get(DIVERGED_EPOCH) is not None:
        validate.whole(f"{where}: {DIVERGED_EPOCH}", data[DIVERGED_EPOCH], minimum=0, fix=fix)
    divergence = data.get(DIVERGENCE)
    if divergence is not None and not isinstance(divergence, dict):
        raise UserInputError(f"{where}: {DIVERGENCE}={_short(divergence)} is not an object; "
                             f"{fix}")
    if divergence and divergence.get(EPOCH) is not None:
        validate.whole(f"{where}: {DIVERGENCE}.{EPOCH}", divergence[EPOCH], minimum=0, fix=fix)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_choice(history: list[dict]) -> dict:
    """The epoch chosen on validation (highest validation accuracy, the first of a tie) and
    the test accuracy there; {} when the run held no validation split out."""
    scored = [(h[VALIDATION_ACCURACY], -i, h) for i, h in enumerate(history)
              if h.get(VALIDATION_ACCURACY) is not None]
    if not scored:
        return {}
    accuracy, _, best = max(scored, key=lambda t: (t[0], t[1]))
    return {BEST_VALIDATION_ACCURACY: accuracy, BEST_VALIDATION_EPOCH: best[EPOCH],
            TEST_AT_BEST_VALIDATION: best[TEST_ACCURACY]}


def epoch_records(results: dict) -> list[EpochRecord]:
    """The per-epoch records of a results dict (entries that are not objects skipped)."""
    return [e for e in results.get(EPOCHS) or [] if isinstance(e, dict)]


def is_finished(run_dir: str) -> bool:
    """Whether the run's results.json has a final status (completed, diverged)."""
    results = read_results(run_dir)
    return results is not None and results.get(STATUS) in FINAL_STATUSES


def write_results(run_dir: str, results: dict) -> str:
    """Write <run_dir>/results.json atomically, in the loop's layout; returns its path."""
    path = os.path.join(run_dir, RESULTS_FILE)
    write_json_atomic(path, results)
    return path
