"""Reading one run folder for the figures: results.json, config.gin and TensorBoard scalars.

    from keras_largebatch.studies.run_data import Run
    run = Run("runs/x/learning_rate=0.1")
    run.series("test_accuracy"), run.lars_local_lr(), run.base_lr()

`python -m keras_largebatch.studies.plot runs/<dir>` builds its figures from these. Sources:
results.json (per-epoch metrics), config.gin (the LR binding and scaling rule for eta/m), and
TensorBoard scalars: `lars/trust_ratio/<variable>` (LARS' local LR), a `ba/...batch_size` tag
logged per update (BA-Momentum), a `*gradient_norm*` tag.
"""

from __future__ import annotations

import ast
import functools
import glob
import math
import os
import re
from collections.abc import Sequence

import numpy as np

from keras_largebatch.studies import results as rs
from keras_largebatch.studies.figures import Curve
from keras_largebatch.studies.results import number

PLOTS_SUBDIR = "plots"  # <dir>/tensorboard/plots: the images, kept apart from training events


def read_scalars(tensorboard_dir: str, *, skip_dirs: Sequence[str] = (PLOTS_SUBDIR,)
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag under `tensorboard_dir` as (steps, values), sorted by step.

    TF2 summaries store scalars as 0-d tensors, TF1 as simple_value; both are read. A step
    written twice (a resumed run) keeps the value written last.
    """
    import tensorflow as tf

    files = sorted(
        p for p in glob.glob(os.path.join(tensorboard_dir, "**", "events.out.tfevents.*"),
                             recursive=True)
        if not set(os.path.relpath(p, tensorboard_dir).split(os.sep)[:-1]) & set(skip_dirs))
    points: dict[str, dict[int, tuple[float, float]]] = {}
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        number = float(value.simple_value)
                    elif value.HasField("tensor") and not value.tensor.tensor_shape.dim:
                        array = tf.make_ndarray(value.tensor)
                        if array.dtype.kind not in "fiu":
                            continue
                        number = float(array)
                    else:
                        continue
                    old = points.setdefault(value.tag, {}).get(event.step)
                    if old is None or event.wall_time >= old[0]:
                        points[value.tag][event.step] = (event.wall_time, number)
        except tf.errors.DataLossError:  # a file cut short by a kill: keep what was read
            continue
    out = {}
    for tag, by_step in points.items():
        steps = np.array(sorted(by_step))
        out[tag] = (steps, np.array([by_step[s][1] for s in steps]))
    return out


def read_config(run_dir: str) -> dict:
    """The literal bindings of <run_dir>/config.gin ({'train.batch_size': 128, ...})."""
    try:
        with open(os.path.join(run_dir, "config.gin")) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    config = {}
    for line in lines:
        match = re.match(r"^([A-Za-z_][\w./]*)\s*=\s*(.+)$", line)
        if match:
            try:
                config[match.group(1)] = ast.literal_eval(match.group(2).strip())
            except (ValueError, SyntaxError):
                continue
    return config


class Run:
    """One run folder: results.json, config.gin and TensorBoard scalars, read on first use."""

    def __init__(self, path: str, label: str | None = None):
        self.path = path
        self.label = label or os.path.basename(os.path.normpath(path))

    @functools.cached_property
    def results(self) -> dict:
        return rs.read_results(self.path) or {}

    @functools.cached_property
    def epochs(self) -> list[dict]:
        return rs.epoch_records(self.results)

    @functools.cached_property
    def scalars(self) -> dict:
        tb = os.path.join(self.path, "tensorboard")
        return read_scalars(tb) if os.path.isdir(tb) else {}

    @functools.cached_property
    def config(self) -> dict:
        return read_config(self.path)

    def series(self, key: str, scale: float = 1.0) -> Curve:
        pairs = [(e[rs.EPOCH], number(e.get(key))) for e in self.epochs if rs.EPOCH in e]
        pairs = [(x, y * scale) for x, y in pairs if y is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def repeats(self) -> int | None:
        if not self.epochs:
            return None
        b = number(self.epochs[0].get(rs.BATCH_SIZE))
        eff = number(self.epochs[0].get(rs.EFFECTIVE_BATCH_SIZE))
        ratio = eff / b if b and eff else None
        return round(ratio) if ratio is not None and math.isfinite(ratio) else None

    def batch_size_per_update(self) -> Curve | None:
        """From a per-update TensorBoard tag (BA-Momentum), else rebuilt from the epochs."""
        tags = sorted(t for t in self.scalars if t.startswith("ba/") and t.endswith("batch_size"))
        if tags:
            steps, values = self.scalars["ba/batch_size" if "ba/batch_size" in tags else tags[0]]
            return steps, values
        x, y, start = [], [], 0
        for e in self.epochs:
            b, sps, t = (number(e.get(k)) for k in
                         (rs.BATCH_SIZE, rs.SAMPLES_PER_SECOND, rs.EPOCH_TIME_S))
            if not b or sps is None or t is None or not math.isfinite(sps * t):
                continue
            x.append(start)
            y.append(b)
            start += max(1, round(sps * t / b))
        if not x:
            return None
        return [*x, start], [*y, y[-1]]

    def gradient_norm(self) -> Curve | None:
        tags = sorted(t for t in self.scalars if "gradient_norm" in t or "grad_norm" in t)
        if not tags:
            return None
        return self.scalars["train/gradient_norm" if "train/gradient_norm" in tags else tags[0]]

    def lars_local_lr(self) -> dict[str, Curve]:
        prefix = "lars/trust_ratio/"
        return {t[len(prefix):]: c for t, c in sorted(self.scalars.items())
                if t.startswith(prefix)}

    @property
    def variant(self) -> str | None:
        """The variant of a sweep run folder `<variant>__<key>=<value>...` (studies/grid.py)."""
        head = self.label.split("__")[0]
        return head if "__" in self.label and "=" not in head else None

    @property
    def batch_size(self) -> int | None:
        """The (first) global batch size: from the epochs, else from config.gin."""
        m = number(self.epochs[0].get(rs.BATCH_SIZE)) if self.epochs else None
        m = m or number(self.config.get("train.batch_size"))
        return int(m) if m and math.isfinite(m) else None

    @property
    def bn_batch_size(self) -> int | None:
        """The ghost-BN batch (seed 001 3.6) bound on the model, e.g.
        `alexnet_reduced.bn_batch_size = 8`; None for ordinary BN or no binding."""
        for key, value in self.config.items():
            if key.endswith(".bn_batch_size"):
                m = number(value)
                return int(m) if m and math.isfinite(m) else None
        return None

    def base_lr(self, lr_key: str | None = None) -> float | None:
        """eta~ = eta / m of seed 001 from the run's LR binding and scaling rule."""
        lr = number(self.config.get(lr_key or "train.learning_rate"))
        m = self.batch_size
        if lr is None or not m:
            return None
        rule = self.config.get("train.lr_scaling", "none")
        ref = number(self.config.get("train.lr_reference_batch_size", 1)) or 1.0
        if rule == "linear":
            return lr / ref
        if rule == "sqrt":
            return lr * math.sqrt(m / ref) / m
        return lr / m
