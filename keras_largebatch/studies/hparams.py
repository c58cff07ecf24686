"""TensorBoard HParams summaries of a study: one session per run, the grid as hyperparameters.

    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin
    tensorboard --logdir runs/<study>        # HPARAMS tab: table, parallel coordinates, scatter

The sweep driver writes them (the training loop knows nothing of studies): the experiment once
per sweep, a run's session when the run has finished (completed or diverged), from its grid
point and its results.json:

    <sweep_dir>/tensorboard/hparams/   hparams_config: the hyperparameters (variant, every grid
                                       key, seed) and the METRIC_TAGS below
    <run_dir>/tensorboard/hparams/     hparams (the run's values, trial id = run name) and one
                                       scalar per metric at step 0

The files are written with tensorboard's own protos and event writer (the hparams plugin's
`hparams_pb` / `hparams_config_pb`), so the sweep process imports no TensorFlow. Each write
replaces the folder's previous event files. Values the hparams plugin cannot hold (a list,
a tuple, None) are written as their repr().
"""

from __future__ import annotations

import glob
import os
import time

from keras_largebatch.studies import results as rs
from keras_largebatch.studies.grid import RunSpec, Study
from keras_largebatch.studies.metrics import METRICS, headline
from keras_largebatch.studies.results import number

HPARAMS_DIR = os.path.join("tensorboard", "hparams")
VARIANT = "variant"
SEED = "seed"
# metric tag -> (display name, what it is); plus "study/<sweep.metric>" when it is another one
METRIC_TAGS = {
    "study/final_test_accuracy": ("final test accuracy", METRICS["final_test_accuracy"][0]),
    "study/best_test_accuracy": ("best test accuracy", METRICS["best_test_accuracy"][0]),
    "study/diverged_epoch": ("diverged epoch", "the epoch the run diverged in (none: it did not)"),
    "study/training_time_s": ("training time, s", "results.json wall_time_s"),
}


def metric_tags(study: Study) -> dict[str, tuple[str, str]]:
    tags = dict(METRIC_TAGS)
    for metric in headline(study.metric):
        tags.setdefault(f"study/{metric}", (metric, METRICS[metric][0]))
    return tags


def hparam_values(study: Study, spec: RunSpec) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters: its variant (when the study has variants), grid values, seed."""
    values = {}
    if any(r.variant for r in study.runs):
        values[VARIANT] = spec.variant or ""
    values.update(spec.params)
    if spec.seed is not None:
        values[SEED] = spec.seed
    return {k: v if isinstance(v, (bool, int, float, str)) else repr(v)
            for k, v in values.items()}


def metric_values(study: Study, results: dict, metrics: dict) -> dict[str, float]:
    """The run's study metrics (`metrics`: metrics.run_metrics of `results`); None left out."""
    values = {
        "study/final_test_accuracy": metrics.get("final_test_accuracy"),
        "study/best_test_accuracy": metrics.get("best_test_accuracy"),
        "study/diverged_epoch": metrics.get("diverged_epoch"),
        "study/training_time_s": number(results.get(rs.WALL_TIME_S)),
        **{f"study/{m}": metrics.get(m) for m in headline(study.metric)},
    }
    return {k: float(v) for k, v in values.items() if number(v) is not None}


def _write(folder: str, summaries) -> str:
    """Replace the event files in `folder` by one holding `summaries` (at step 0)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    os.makedirs(folder, exist_ok=True)
    old = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
    writer = EventFileWriter(folder)
    for summary in summaries:
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
    writer.close()
    path = writer.get_logdir()
    for name in old:
        os.remove(name)
    return path


def write_experiment(study: Study, sweep_dir: str) -> str:
    """<sweep_dir>/tensorboard/hparams: the study's hyperparameters and metrics."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    columns: dict[str, list] = {}
    for spec in study.runs:
        for key, value in hparam_values(study, spec).items():
            columns.setdefault(key, []).append(value)
    hparams = []
    for key, values in columns.items():
        kinds = {type(v) for v in values}
        distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
        domain = hp.Discrete(distinct) if len(kinds) == 1 else None  # Discrete: one type only
        hparams.append(hp.HParam(key, domain))
    metrics = [hp.Metric(tag, display_name=name, description=about)
               for tag, (name, about) in metric_tags(study).items()]
    return _write(os.path.join(sweep_dir, HPARAMS_DIR),
                  [hp.hparams_config_pb(hparams, metrics)])


def write_run(study: Study, spec: RunSpec, run_dir: str, results: dict, metrics: dict) -> str:
    """<run_dir>/tensorboard/hparams: the run's values and its metrics as step-0 scalars."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp

    scalars = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=value)
        for tag, value in metric_values(study, results, metrics).items()])
    session = hp.hparams_pb(hparam_values(study, spec), trial_id=spec.name)
    return _write(os.path.join(run_dir, HPARAMS_DIR), [session, scalars])
