"""Plots of a run or a sweep after the papers' figures: PNGs beside the results, and the same
images in TensorBoard (<dir>/tensorboard/plots).

    python -m keras_largebatch.plot runs/<run_or_sweep_dir> [--notensorboard]
    python -m keras_largebatch.plot runs/<sweep_dir> --runs='boom_*' --out_dir=runs/<sweep_dir>/boom

regenerates whatever applies to the folder:

    test_error.png             test error vs epoch, several runs on one axis  seed 000 Figs 1-2, 4-7
    accuracy_vs_base_lr.png    accuracy vs base LR eta/m, a curve per batch   seed 001 Figs 1-12
                               size, diverged runs marked x (sweeps only)
    train_loss.png             training loss per epoch                       seed 002 Figs 1, 4
    batch_size_per_update.png  batch size of every update                    seed 002 Figs 3, 5
    test_error_by_M.png        test error vs epoch per batch-augmentation M  seed 003 Fig. 1
    gradient_norm.png          gradient L2 norm over training                seed 003 Fig. 4
    lars_local_lr.png          LARS local LR per layer over training         seed 004 Fig. 2

Sources: results.json (per-epoch metrics), config.gin (the LR binding and scaling rule for
eta/m), and TensorBoard scalars: `lars/trust_ratio/<variable>` (LARS' local LR), a
`ba/...batch_size` tag logged per update (BA-Momentum), a `*gradient_norm*` tag. A figure whose
data a folder lacks is skipped. Each plot function takes plain arrays, so notebooks can call it.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import glob
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from keras_largebatch import sweep as sweep_lib  # noqa: E402
from keras_largebatch.errors import UserInputError  # noqa: E402
from keras_largebatch.sweep import _number  # noqa: E402

Curve = tuple[Sequence[float], Sequence[float]]
PLOTS_SUBDIR = "plots"  # <dir>/tensorboard/plots: the images, kept apart from training events
MAX_CURVES = 10  # sweeps with more runs plot the best ones by the sweep's metric


# ---- Figures (plain data in, PNG out) ----------------------------------------------------------

def _figure(width: float = 6.4, height: float = 4.2):
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot()


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for ax in fig.axes:  # epochs are whole numbers: no 1.25-epoch ticks on short runs
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    return path


def _lines(ax, curves: Mapping[str, Curve], **kwargs) -> None:
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, **kwargs)
    if curves:
        ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
    ax.grid(alpha=0.3)


def _log_if_wide(ax, curves: Mapping[str, Curve], axis: str = "y") -> None:
    values = np.concatenate([np.asarray(c[1], float) for c in curves.values()] or [[]])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def plot_test_error(curves: Mapping[str, Curve], path: str, *,
                    title: str = "Test error") -> str:
    """Test error (%) vs epoch, one line per run: {label: (epochs, error_percent)}."""
    fig, ax = _figure()
    _lines(ax, curves)
    ax.set(xlabel="epoch", ylabel="test error (%)", title=title)
    return _save(fig, path)


def plot_accuracy_vs_base_lr(points: Sequence[Mapping], path: str, *,
                             ylabel: str = "test accuracy (%)",
                             title: str = "Test accuracy vs base learning rate") -> str:
    """Seed 001's figure: accuracy vs eta~ = eta/m on a log2 axis, one curve per batch size.

    `points`: dicts with batch_size, base_lr, accuracy (fraction), diverged (bool) and an
    optional variant (e.g. warmup / no_warmup: one panel each, as seed 001 Figs 1 and 16 are
    separate figures). Diverged runs are an x near the bottom of the axis in their batch size's
    colour, one row per batch size.
    """
    panels: dict[str, list[Mapping]] = {}
    for p in points:
        panels.setdefault(p.get("variant") or "", []).append(p)
    fig = Figure(figsize=(6.4 * max(1, len(panels)) * 0.8 + 1.3, 4.2), dpi=100)
    axes = fig.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)[0]
    cmap = matplotlib.colormaps["viridis"]
    sizes = sorted({int(p["batch_size"]) for p in points})
    colors = {m: cmap(i / max(1, len(sizes) - 1)) for i, m in enumerate(sizes)}
    lrs = [p["base_lr"] for p in points]
    for ax, (variant, group_points) in zip(axes, panels.items() or [("", [])]):
        failed = []
        for m in sizes:
            group = sorted((p for p in group_points if int(p["batch_size"]) == m),
                           key=lambda p: p["base_lr"])
            ok = [p for p in group if not p["diverged"] and p["accuracy"] is not None
                  and math.isfinite(p["accuracy"])]
            ax.plot([p["base_lr"] for p in ok], [100 * p["accuracy"] for p in ok], "o-",
                    color=colors[m], label=f"m = {m}")
            row = 0.03 + 0.035 * sizes.index(m)  # one row of x per batch size: no overlaps
            failed += [(p["base_lr"], row, colors[m]) for p in group if p not in ok]
        if failed:  # at the bottom of the axis (x in data, y in axes coordinates)
            ax.scatter([x for x, _, _ in failed], [y for _, y, _ in failed], marker="x", s=40,
                       c=[c for _, _, c in failed], transform=ax.get_xaxis_transform(),
                       label="diverged")
        ax.set_xscale("log", base=2)
        if lrs:
            ax.set_xlim(min(lrs) / 1.5, max(lrs) * 1.5)
        ax.set(xlabel=r"base learning rate $\tilde\eta = \eta / m$",
               title=f"{title}: {variant}" if variant else title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2 if len(sizes) > 5 else 1)
    axes[0].set_ylabel(ylabel)
    return _save(fig, path)


def plot_train_loss(curves: Mapping[str, Curve], path: str, *,
                    title: str = "Training loss per epoch", ylabel: str = "training loss") -> str:
    """Training loss vs epoch, one line per run: {label: (epochs, loss)}."""
    fig, ax = _figure()
    _lines(ax, curves)
    _log_if_wide(ax, curves)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    return _save(fig, path)


def plot_batch_size_per_update(curves: Mapping[str, Curve], path: str, *,
                               title: str = "Batch size per update") -> str:
    """Batch size of every update vs update index: {label: (iterations, batch_sizes)}."""
    fig, ax = _figure()
    for label, (x, y) in curves.items():
        ax.step(x, y, where="post", label=label, linewidth=1)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    _log_if_wide(ax, curves)
    ax.set(xlabel="iteration (update)", ylabel="batch size", title=title)
    return _save(fig, path)


def plot_gradient_norm(curves: Mapping[str, Curve], path: str, *, xlabel: str = "epoch",
                       title: str = "Gradient L2 norm") -> str:
    """Gradient L2 norm over training: {label: (step, norm)}."""
    fig, ax = _figure()
    _lines(ax, curves)
    _log_if_wide(ax, curves)
    ax.set(xlabel=xlabel, ylabel=r"$\|g\|_2$", title=title)
    return _save(fig, path)


def plot_lars_local_lr(panels: Mapping[str, Mapping[str, Curve]], path: str, *,
                       xlabel: str = "epoch") -> str:
    """Seed 004 Fig. 2: LARS local LR per layer over training, one panel per run.

    `panels`: {run label: {variable: (steps, local_lr)}}.
    """
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=100)
    for i, (label, layers) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        for layer, (x, y) in layers.items():
            ax.plot(x, y, label=layer, linewidth=1.2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set(xlabel=xlabel, ylabel=r"local LR $\lambda^l$", title=label)
        ax.legend(fontsize="x-small")
    return _save(fig, path)


# ---- Reading runs -------------------------------------------------------------------------------

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
        return sweep_lib.read_results(self.path) or {}

    @functools.cached_property
    def epochs(self) -> list[dict]:
        return [e for e in self.results.get("epochs") or [] if isinstance(e, dict)]

    @functools.cached_property
    def scalars(self) -> dict:
        tb = os.path.join(self.path, "tensorboard")
        return read_scalars(tb) if os.path.isdir(tb) else {}

    @functools.cached_property
    def config(self) -> dict:
        return read_config(self.path)

    def series(self, key: str, scale: float = 1.0) -> Curve:
        pairs = [(e["epoch"], _number(e.get(key))) for e in self.epochs
                 if "epoch" in e]
        pairs = [(x, y * scale) for x, y in pairs if y is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def repeats(self) -> int | None:
        if not self.epochs:
            return None
        b = _number(self.epochs[0].get("batch_size"))
        eff = _number(self.epochs[0].get("effective_batch_size"))
        return round(eff / b) if b and eff else None

    def batch_size_per_update(self) -> Curve | None:
        """From a per-update TensorBoard tag (BA-Momentum), else rebuilt from the epochs."""
        tags = sorted(t for t in self.scalars if t.startswith("ba/") and t.endswith("batch_size"))
        if tags:
            steps, values = self.scalars["ba/batch_size" if "ba/batch_size" in tags else tags[0]]
            return steps, values
        x, y, start = [], [], 0
        for e in self.epochs:
            b, sps, t = (_number(e.get(k)) for k in
                         ("batch_size", "samples_per_second", "epoch_time_s"))
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
        """The variant of a sweep run folder `<variant>__<key>=<value>...` (see sweep.py)."""
        head = self.label.split("__")[0]
        return head if "__" in self.label and "=" not in head else None

    @property
    def batch_size(self) -> int | None:
        """The (first) global batch size: from the epochs, else from config.gin."""
        m = _number(self.epochs[0].get("batch_size")) if self.epochs else None
        m = m or _number(self.config.get("train.batch_size"))
        return int(m) if m else None

    def base_lr(self, lr_key: str | None = None) -> float | None:
        """eta~ = eta / m of seed 001 from the run's LR binding and scaling rule."""
        lr = _number(self.config.get(lr_key or "train.learning_rate"))
        m = self.batch_size
        if lr is None or not m:
            return None
        rule = self.config.get("train.lr_scaling", "none")
        ref = _number(self.config.get("train.lr_reference_batch_size", 1)) or 1.0
        if rule == "linear":
            return lr / ref
        if rule == "sqrt":
            return lr * math.sqrt(m / ref) / m
        return lr / m


def _step_label(run: Run, steps) -> str:
    return "epoch" if len(steps) and max(steps) <= max(len(run.epochs), 1) else "step"


# ---- One run, one sweep -------------------------------------------------------------------------

def _curves_of(runs: Sequence[Run], build) -> dict:
    out = {}
    for run in runs:
        curve = build(run)
        if curve is not None and len(curve[0]):
            out[run.label] = curve
    return out


def _common_plots(runs: Sequence[Run], out_dir: str, title: str) -> list[str]:
    paths = []
    errors = _curves_of(runs, lambda r: _complement(r.series("test_accuracy", 100.0)))
    if errors:
        paths.append(plot_test_error(errors, os.path.join(out_dir, "test_error.png"),
                                     title=f"Test error: {title}"))
    # Seed 002 plots the loss on the whole training set (train.eval_train_set); use it when
    # every run has it, else the epoch's running mean (dropout on, weights moving).
    whole = all(r.series("full_train_loss")[0] for r in runs)
    losses = _curves_of(runs, lambda r: r.series("full_train_loss" if whole else "train_loss"))
    if losses:
        paths.append(plot_train_loss(
            losses, os.path.join(out_dir, "train_loss.png"), title=f"Training loss: {title}",
            ylabel="loss on the whole training set" if whole else "training loss (epoch mean)"))
    sizes = _curves_of(runs, Run.batch_size_per_update)
    if sizes:
        paths.append(plot_batch_size_per_update(
            sizes, os.path.join(out_dir, "batch_size_per_update.png"),
            title=f"Batch size per update: {title}"))
    norms = _curves_of(runs, Run.gradient_norm)
    if norms:
        first = next(r for r in runs if r.label in norms)
        paths.append(plot_gradient_norm(norms, os.path.join(out_dir, "gradient_norm.png"),
                                        xlabel=_step_label(first, norms[first.label][0]),
                                        title=f"Gradient L2 norm: {title}"))
    lars_runs = [r for r in runs if r.lars_local_lr()][:6]
    if lars_runs:
        x = next(iter(lars_runs[0].lars_local_lr().values()))[0]
        paths.append(plot_lars_local_lr({r.label: r.lars_local_lr() for r in lars_runs},
                                        os.path.join(out_dir, "lars_local_lr.png"),
                                        xlabel=_step_label(lars_runs[0], x)))
    return paths


def _complement(curve: Curve) -> Curve:
    return curve[0], [100.0 - y for y in curve[1]]


def plot_run(run_dir: str) -> list[str]:
    """Every figure that applies to one run; PNGs in `run_dir`."""
    run = Run(run_dir)
    return _common_plots([run], run_dir, run.label)


def _sweep_runs(sweep_dir: str) -> tuple[list[Run], dict]:
    try:
        with open(os.path.join(sweep_dir, sweep_lib.SWEEP_FILE)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        manifest = {}
    names = list(manifest.get("order") or manifest.get("runs") or {})
    found = sorted(d for d in os.listdir(sweep_dir) if d not in names and _is_run_dir(
        os.path.join(sweep_dir, d)))
    runs = [Run(os.path.join(sweep_dir, n)) for n in names + found
            if _is_run_dir(os.path.join(sweep_dir, n))]
    return runs, manifest


def _is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "results.json"))


def base_lr_points(runs: Sequence[Run], scores: Mapping[str, dict], *, metric: str,
                   lr_key: str | None = None) -> list[dict]:
    """The points of `plot_accuracy_vs_base_lr`, one per run whose base LR is known.

    A run that diverged in its first epoch has no epochs; its batch size comes from config.gin.
    """
    points = []
    for r in runs:
        lr, m = r.base_lr(lr_key), r.batch_size
        if lr is not None and m:
            points.append({"run": r.label, "variant": r.variant, "batch_size": m, "base_lr": lr,
                           "accuracy": scores[r.label][metric],
                           "diverged": scores[r.label]["status"] == "diverged"})
    return points


def plot_sweep(sweep_dir: str, *, runs_glob: str | None = None,
               out_dir: str | None = None) -> list[str]:
    """Every figure that applies to a sweep; PNGs in `out_dir` (default `sweep_dir`).

    `runs_glob`: only the runs whose folder name matches one of these comma-separated
    fnmatch patterns, e.g. 'boom_*' (python -m keras_largebatch.plot runs/x --runs='boom_*'
    --out_dir=runs/x/boom).
    """
    runs, manifest = _sweep_runs(sweep_dir)
    if runs_glob:
        patterns = [g.strip() for g in runs_glob.split(",") if g.strip()]
        names = [r.label for r in runs]
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.label, g) for g in patterns)]
        if not runs:
            raise UserInputError(f"no run in {sweep_dir} matches --runs={runs_glob!r}; its runs: "
                             f"{', '.join(names) or 'none'}")
    if not runs:
        return []
    out_dir = out_dir or sweep_dir
    metric = manifest.get("metric") or "best_test_accuracy"
    if "accuracy" not in metric:
        metric = "best_test_accuracy"
    bound = manifest.get("loss_upper_bound")
    scores = {r.label: sweep_lib.run_metrics(r.results, loss_upper_bound=bound) for r in runs}
    title = manifest.get("title") or os.path.basename(os.path.normpath(sweep_dir))
    paths = []

    points = base_lr_points(runs, scores, metric=metric, lr_key=manifest.get("base_lr_key"))
    if len({p["base_lr"] for p in points}) > 1:
        paths.append(plot_accuracy_vs_base_lr(
            points, os.path.join(out_dir, "accuracy_vs_base_lr.png"),
            ylabel=f"{metric.replace('_', ' ')} (%)", title=f"{title}: accuracy vs eta/m"))

    shown = runs
    if len(runs) > MAX_CURVES:
        def key(r):
            value = scores[r.label][metric]
            return -value if value is not None and math.isfinite(value) else math.inf
        shown = sorted(runs, key=key)[:MAX_CURVES]
        title = f"{title} ({MAX_CURVES} best of {len(runs)} by {metric})"
    paths += _common_plots(shown, out_dir, title)

    by_m = {r: r.repeats for r in runs if r.repeats}
    if len(set(by_m.values())) > 1:
        ms = sorted(set(by_m.values()))
        curves = {}
        for r, m in sorted(by_m.items(), key=lambda item: item[1]):
            same = sum(v == m for v in by_m.values())
            label = f"M = {m}" + (f" ({r.label})" if same > 1 else "")
            curves[label] = _complement(r.series("test_accuracy", 100.0))
        paths.append(plot_test_error(curves, os.path.join(out_dir, "test_error_by_M.png"),
                                     title=f"Test error per M ({', '.join(map(str, ms))})"))
    return paths


# ---- Dispatch and TensorBoard -------------------------------------------------------------------

def write_tensorboard_images(paths: Sequence[str], logdir: str) -> None:
    """The PNGs as `tf.summary.image`s in `logdir` (its previous plot events are replaced)."""
    import tensorflow as tf

    for old in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        os.remove(old)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        for path in paths:
            image = tf.io.decode_png(tf.io.read_file(path), channels=4)
            tf.summary.image(os.path.splitext(os.path.basename(path))[0], image[None], step=0)
    writer.close()


def plot_dir(path: str, *, tensorboard: bool = True, runs_glob: str | None = None,
             out_dir: str | None = None) -> list[str]:
    """Regenerate every applicable figure of a run or sweep folder; returns the PNG paths.

    `runs_glob` / `out_dir` (sweeps only): plot a subset of the runs into another folder.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a folder")
    is_run = _is_run_dir(path) or os.path.isfile(os.path.join(path, "config.gin"))
    if is_run and (runs_glob or out_dir):
        raise UserInputError(f"{path} is one run; --runs and --out_dir apply to sweep folders: "
                             "drop them, or pass the sweep folder")
    paths = plot_run(path) if is_run else plot_sweep(path, runs_glob=runs_glob, out_dir=out_dir)
    if paths and tensorboard:
        write_tensorboard_images(paths, os.path.join(out_dir or path, "tensorboard", PLOTS_SUBDIR))
    return paths


def main(argv: list[str]) -> None:
    from absl import flags

    if len(argv) != 2:
        print("error: give one run or sweep folder: python -m keras_largebatch.plot runs/<x>",
              file=sys.stderr)
        sys.exit(2)
    try:
        paths = plot_dir(argv[1], tensorboard=flags.FLAGS.tensorboard,
                         runs_glob=flags.FLAGS.runs, out_dir=flags.FLAGS.out_dir)
    except FileNotFoundError as e:
        print(f"error: {e}; pass a run or sweep folder", file=sys.stderr)
        sys.exit(2)
    except UserInputError as e:
        print(f"error: {e.line}", file=sys.stderr)
        sys.exit(2)
    if not paths:
        print(f"error: nothing to plot in {argv[1]} (no results.json found)", file=sys.stderr)
        sys.exit(2)
    for p in paths:
        print(p)


def run() -> None:
    from absl import app, flags

    flags.DEFINE_bool("tensorboard", True, "Also write the PNGs to <dir>/tensorboard/plots.")
    flags.DEFINE_string("runs", None, "Sweeps: plot only the runs whose folder names match "
                        "these comma-separated globs, e.g. 'boom_*'.")
    flags.DEFINE_string("out_dir", None, "Sweeps: write the figures here instead of the sweep "
                        "folder.")
    app.run(main)


if __name__ == "__main__":
    run()
