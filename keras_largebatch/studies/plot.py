"""Plots of a run or a sweep after the papers' figures: PNGs beside the results, and the same
images in TensorBoard (<dir>/tensorboard/plots).

    python -m keras_largebatch.studies.plot runs/<run_or_sweep_dir> [--notensorboard]
    python -m keras_largebatch.studies.plot runs/<sweep_dir> --runs='boom_*' \\
        --out_dir=runs/<sweep_dir>/boom

regenerates whatever applies to the folder:

    test_error.png             test error vs epoch, several runs on one axis  seed 000 Figs 1-2, 4-7
    accuracy_vs_base_lr.png    accuracy vs base LR eta/m, a curve per batch   seed 001 Figs 1-12
                               size, diverged runs marked x (sweeps only)
    train_loss.png             training loss per epoch                       seed 002 Figs 1, 4
    batch_size_per_update.png  batch size of every update                    seed 002 Figs 3, 5
    test_error_by_M.png        test error vs epoch per batch-augmentation M  seed 003 Fig. 1
    gradient_norm.png          gradient L2 norm over training                seed 003 Fig. 4
    lars_local_lr.png          LARS local LR per layer over training         seed 004 Fig. 2

A sweep with `sweep.seeds` (sweep.json's "seeds") gets one curve or point per grid point: the
mean over its seeds with a +- std band (curves) or error bars (accuracy vs base LR); the
per-update figures (batch size, gradient norm, LARS local LR) show each point's first seed.

Sources: results.json (per-epoch metrics), config.gin (the LR binding and scaling rule for
eta/m), and TensorBoard scalars: `lars/trust_ratio/<variable>` (LARS' local LR), a
`ba/...batch_size` tag logged per update (BA-Momentum), a `*gradient_norm*` tag. A figure whose
data a folder lacks is skipped. The figure functions (studies/figures.py) take plain arrays, so
notebooks can call them; studies/run_data.py reads a run folder.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import sys
from collections.abc import Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_largebatch.errors import UserInputError  # noqa: E402
from keras_largebatch.studies import results as rs  # noqa: E402
from keras_largebatch.studies.figures import (  # noqa: E402
    Curve,
    plot_accuracy_vs_base_lr,
    plot_batch_size_per_update,
    plot_gradient_norm,
    plot_lars_local_lr,
    plot_test_error,
    plot_train_loss,
)
from keras_largebatch.studies.manifest import read_manifest  # noqa: E402
from keras_largebatch.studies.metrics import METRICS, run_metrics  # noqa: E402
from keras_largebatch.studies.run_data import (  # noqa: E402
    PLOTS_SUBDIR,
    Run,
    read_scalars,
)
from keras_largebatch.studies.seeds import mean_curve, mean_std, split_name  # noqa: E402

MAX_CURVES = 10  # sweeps with more runs plot the best ones by the sweep's metric

__all__ = [
    "MAX_CURVES", "PLOTS_SUBDIR", "Curve", "Run", "base_lr_points", "plot_accuracy_vs_base_lr",
    "plot_batch_size_per_update", "plot_dir", "plot_gradient_norm", "plot_lars_local_lr",
    "plot_run", "plot_sweep", "plot_test_error", "plot_train_loss", "read_scalars",
    "seed_points", "write_tensorboard_images",
]


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


def _mean_curves_of(groups: Mapping[str, Sequence[Run]], build) -> tuple[dict, dict, dict]:
    """({label: (x, mean over seeds)}, {label: std}, {label: point}) of the seeds' curves
    (studies/seeds.py).

    A point where fewer seeds reach the curve's last x than ran (a seed diverged) is labelled
    "<point> (k/n seeds)", so its mean is not read as a mean over all of them; the third
    mapping gives each curve label's grid point."""
    curves, bands, points = {}, {}, {}
    for point, group in groups.items():
        parts = [c for c in (build(r) for r in group) if c is not None and len(c[0])]
        x, mean, std = mean_curve(parts)
        if x:
            full = sum(1 for c in parts if max(c[0]) >= x[-1])
            label = point if full == len(group) else f"{point} ({full}/{len(group)} seeds)"
            curves[label], bands[label], points[label] = (x, mean), std, point
    return curves, bands, points


def _common_plots(runs: Sequence[Run], out_dir: str, title: str,
                  groups: Mapping[str, Sequence[Run]] | None = None,
                  first_seed_title: str | None = None) -> list[str]:
    """The figures of `runs`; with `groups` ({grid point: its seeds' runs}) test error,
    training loss and gradient norm are means over seeds with a +- std band, and the
    per-update figures (batch size per update, LARS local LR) show each point's first seed,
    titled `first_seed_title`."""
    paths = []
    one_title = first_seed_title or title
    if groups:
        every = [r for group in groups.values() for r in group]
        runs = [Run(group[0].path, label) for label, group in groups.items()]

        def curves_of(build):
            return _mean_curves_of(groups, build)
    else:
        every = runs

        def curves_of(build):
            curves = _curves_of(runs, build)
            return curves, None, {label: label for label in curves}
    errors, bands, _ = curves_of(lambda r: _complement(r.series("test_accuracy", 100.0)))
    if errors:
        paths.append(plot_test_error(errors, os.path.join(out_dir, "test_error.png"),
                                     title=f"Test error: {title}", bands=bands))
    # Seed 002 plots the loss on the whole training set (train.eval_train_set); use it when
    # every run has it, else the epoch's running mean (dropout on, weights moving).
    whole = all(r.series("full_train_loss")[0] for r in every)
    losses, bands, _ = curves_of(lambda r: r.series("full_train_loss" if whole else "train_loss"))
    if losses:
        paths.append(plot_train_loss(
            losses, os.path.join(out_dir, "train_loss.png"), title=f"Training loss: {title}",
            ylabel="loss on the whole training set" if whole else "training loss (epoch mean)",
            bands=bands))
    sizes = _curves_of(runs, Run.batch_size_per_update)
    if sizes:
        paths.append(plot_batch_size_per_update(
            sizes, os.path.join(out_dir, "batch_size_per_update.png"),
            title=f"Batch size per update: {one_title}"))
    norms, bands, points = curves_of(Run.gradient_norm)
    if norms:
        label = next(iter(norms))
        first = next(r for r in runs if r.label == points[label])
        paths.append(plot_gradient_norm(norms, os.path.join(out_dir, "gradient_norm.png"),
                                        xlabel=_step_label(first, norms[label][0]),
                                        title=f"Gradient L2 norm: {title}", bands=bands))
    lars_runs = [r for r in runs if r.lars_local_lr()][:6]
    if lars_runs:
        x = next(iter(lars_runs[0].lars_local_lr().values()))[0]
        paths.append(plot_lars_local_lr({r.label: r.lars_local_lr() for r in lars_runs},
                                        os.path.join(out_dir, "lars_local_lr.png"),
                                        xlabel=_step_label(lars_runs[0], x),
                                        title=first_seed_title))
    return paths


def _complement(curve: Curve) -> Curve:
    return curve[0], [100.0 - y for y in curve[1]]


def plot_run(run_dir: str) -> list[str]:
    """Every figure that applies to one run; PNGs in `run_dir`."""
    run = Run(run_dir)
    return _common_plots([run], run_dir, run.label)


def _sweep_runs(sweep_dir: str) -> tuple[list[Run], dict]:
    try:
        manifest = read_manifest(sweep_dir)
    except UserInputError as e:  # the figures need only the run folders
        print(f"warning: {e.line}; plotting the run folders without it", file=sys.stderr)
        manifest = {}
    names = list(manifest.get("order") or manifest.get("runs") or {})
    found = sorted(d for d in os.listdir(sweep_dir) if d not in names and _is_run_dir(
        os.path.join(sweep_dir, d)))
    runs = [Run(os.path.join(sweep_dir, n)) for n in names + found
            if _is_run_dir(os.path.join(sweep_dir, n))]
    return runs, manifest


def _is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, rs.RESULTS_FILE))


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
                           "bn_batch_size": r.bn_batch_size, "accuracy": scores[r.label][metric],
                           "diverged": scores[r.label]["status"] == rs.DIVERGED})
    return points


def plot_sweep(sweep_dir: str, *, runs_glob: str | None = None,
               out_dir: str | None = None) -> list[str]:
    """Every figure that applies to a sweep; PNGs in `out_dir` (default `sweep_dir`).

    `runs_glob`: only the runs whose folder name matches one of these comma-separated
    fnmatch patterns, e.g. 'boom_*' (python -m keras_largebatch.studies.plot runs/x
    --runs='boom_*' --out_dir=runs/x/boom).
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
    if manifest.get("seeds"):
        return _plot_seed_sweep(runs, manifest, sweep_dir, out_dir, metric)
    if metric not in METRICS or "accuracy" not in metric:
        metric = "best_test_accuracy"
    bound = manifest.get("loss_upper_bound")
    scores = {r.label: run_metrics(r.results, loss_upper_bound=bound) for r in runs}
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


def seed_points(points: Sequence[Mapping]) -> list[dict]:
    """`base_lr_points` of a sweep with seeds -> one point per grid point: accuracy = mean over
    the seeds that did not diverge (`seeds` of them, out of `runs`), accuracy_std their sample
    std; diverged when all did."""
    groups: dict[str, list[Mapping]] = {}
    for p in points:
        groups.setdefault(split_name(p["run"])[0], []).append(p)
    out = []
    for point, group in groups.items():
        ok = [p["accuracy"] for p in group if not p["diverged"]]
        mean, std, n = mean_std(ok)
        head = point.split("__")[0]
        out.append({**group[0], "run": point, "accuracy": mean, "accuracy_std": std,
                    "seeds": n, "runs": len(group), "diverged": mean is None,
                    "variant": head if "__" in point and "=" not in head else None})
    return out


def _plot_seed_sweep(runs: Sequence[Run], manifest: Mapping, sweep_dir: str, out_dir: str,
                     metric: str) -> list[str]:
    """`plot_sweep` of a sweep with `sweep.seeds`: each grid point's mean over its seeds, with
    error bars (accuracy vs base LR) or a +- std band (curves)."""
    if metric not in METRICS or "accuracy" not in metric:
        metric = "best_test_accuracy"
    bound = manifest.get("loss_upper_bound")
    scores = {r.label: run_metrics(r.results, loss_upper_bound=bound) for r in runs}
    name = manifest.get("title") or os.path.basename(os.path.normpath(sweep_dir))
    title = f"{name} (mean +- std over seeds {', '.join(map(str, manifest['seeds']))})"
    first_seed_title = f"{name} (seed {manifest['seeds'][0]} of each point)"
    paths = []
    points = seed_points(base_lr_points(runs, scores, metric=metric,
                                        lr_key=manifest.get("base_lr_key")))
    if len({p["base_lr"] for p in points}) > 1:
        paths.append(plot_accuracy_vs_base_lr(
            points, os.path.join(out_dir, "accuracy_vs_base_lr.png"),
            ylabel=f"{metric.replace('_', ' ')} (%)", title=f"{title}: accuracy vs eta/m"))
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(split_name(r.label)[0], []).append(r)
    if len(groups) > MAX_CURVES:
        def key(item):
            mean = mean_std(scores[r.label][metric] for r in item[1])[0]
            return -mean if mean is not None else math.inf
        groups = dict(sorted(groups.items(), key=key)[:MAX_CURVES])
        title = f"{title} ({MAX_CURVES} best grid points by mean {metric})"
    paths += _common_plots(runs, out_dir, title, groups=groups,
                           first_seed_title=first_seed_title)
    by_m = {label: group[0].repeats for label, group in groups.items() if group[0].repeats}
    if len(set(by_m.values())) > 1:
        ms = sorted(set(by_m.values()))
        ordered = sorted(by_m.items(), key=lambda item: item[1])
        curves, bands = {}, {}
        for label, m in ordered:
            same = sum(v == m for v in by_m.values())
            name = f"M = {m}" + (f" ({label})" if same > 1 else "")
            x, mean, std = mean_curve([_complement(r.series("test_accuracy", 100.0))
                                       for r in groups[label]])
            curves[name], bands[name] = (x, mean), std
        paths.append(plot_test_error(curves, os.path.join(out_dir, "test_error_by_M.png"),
                                     title=f"Test error per M ({', '.join(map(str, ms))})",
                                     bands=bands))
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
        print("error: give one run or sweep folder: "
              "python -m keras_largebatch.studies.plot runs/<x>", file=sys.stderr)
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
    from keras_largebatch import cli_flags

    app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
    run()
