"""The figures of the papers, from plain data to PNG: no run folders, no TensorFlow.

    from keras_largebatch.studies import figures
    figures.plot_test_error({"m = 32": ([1, 2, 3], [40.0, 30.0, 25.0])}, "test_error.png")

`python -m keras_largebatch.studies.plot runs/<dir>` reads runs and calls these; notebooks can
call them directly with arrays. Each function returns the path of the PNG it wrote. Studies with
seeds (studies/seeds.py) pass the mean over seeds as the curve and its std as `bands` (a shaded
mean +- std), and `accuracy_std` per point of the base-LR figure (error bars).

    plot_test_error             test error vs epoch, one line per run   seed 000 Figs 1-2, 4-7
    plot_accuracy_vs_base_lr    accuracy vs eta/m, a curve per batch    seed 001 Figs 1-12
    plot_train_loss             training loss per epoch                 seed 002 Figs 1, 4
    plot_batch_size_per_update  batch size of every update              seed 002 Figs 3, 5
    plot_gradient_norm          gradient L2 norm over training          seed 003 Fig. 4
    plot_lars_local_lr          LARS local LR per layer over training   seed 004 Fig. 2
                                (coloured by kind above 10 variables)
    plot_ba_onset               Eq. 7's gap vs its noise term, per update  seed 002 Eq. 7
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Curve = tuple[Sequence[float], Sequence[float]]
TITLE_MARGIN_IN = 0.05  # clear space left and right of a title (5 px at 100 dpi)


def _figure(width: float = 6.4, height: float = 4.2):
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot()


def _fit_titles(fig) -> None:
    """Wrap every title wider than the figure onto more lines (at spaces), so a long study
    title ("Training loss: <study> (mean +- std over seeds 0, 1, 2)") is not cut at the edge,
    nor touches it: a margin of TITLE_MARGIN_IN inches stays clear on both sides."""
    margin = TITLE_MARGIN_IN * fig.dpi

    def cut(text) -> bool:  # a title is centred on its axes, so it can leave either side
        box = text.get_window_extent()
        return box.x0 < margin or box.x1 > fig.bbox.width - margin

    for text in [ax.title for ax in fig.axes] + list(fig.texts):
        words = " ".join(text.get_text().split("\n"))
        width = len(words)
        while width > 10 and cut(text):
            width = int(width * 0.9)
            text.set_text(textwrap.fill(words, width, break_long_words=False,
                                        break_on_hyphens=False))


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for ax in fig.axes:  # epochs are whole numbers: no 1.25-epoch ticks on short runs
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    _fit_titles(fig)  # where the layout put the axes; then lay out the taller titles
    fig.tight_layout()
    fig.savefig(path)
    return path


def _lines(ax, curves: Mapping[str, Curve], bands: Mapping[str, Sequence[float]] | None = None,
           **kwargs) -> None:
    for label, (x, y) in curves.items():
        (line,) = ax.plot(x, y, label=label, **kwargs)
        if bands and label in bands:  # mean +- std over seeds
            mean, std = np.asarray(y, float), np.asarray(bands[label], float)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2,
                            linewidth=0)
    if curves:
        ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
    ax.grid(alpha=0.3)


def _log_if_wide(ax, curves: Mapping[str, Curve], axis: str = "y") -> None:
    values = np.concatenate([np.asarray(c[1], float) for c in curves.values()] or [[]])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def plot_test_error(curves: Mapping[str, Curve], path: str, *,
                    title: str = "Test error",
                    bands: Mapping[str, Sequence[float]] | None = None) -> str:
    """Test error (%) vs epoch, one line per run: {label: (epochs, error_percent)}; `bands`:
    {label: std per epoch}, shaded around the line."""
    fig, ax = _figure()
    _lines(ax, curves, bands)
    ax.set(xlabel="epoch", ylabel="test error (%)", title=title)
    return _save(fig, path)


def _curve_key(point: Mapping) -> tuple[int, int]:
    """(batch size, BN batch) of a point; BN batch 0 = ordinary BN or none."""
    return int(point["batch_size"]), int(point.get("bn_batch_size") or 0)


def _curve_label(key: tuple[int, int]) -> str:
    m, bn = key
    return f"m = {m}, BN batch {bn}" if bn else f"m = {m}"


def plot_accuracy_vs_base_lr(points: Sequence[Mapping], path: str, *,
                             ylabel: str = "test accuracy (%)",
                             title: str = "Test accuracy vs base learning rate") -> str:
    """Seed 001's figure: accuracy vs eta~ = eta/m on a log2 axis, one curve per batch size.

    `points`: dicts with batch_size, base_lr, accuracy (fraction), diverged (bool), an
    optional accuracy_std (fraction: error bars, the std over seeds) and an optional variant
    (e.g. warmup / no_warmup: one panel each, as seed 001 Figs 1 and 16 are separate figures).
    Points with a bn_batch_size (ghost BN, seed 001 Fig. 13: the SGD batch fixed, the BN batch
    varied) get one curve per (batch size, BN batch). Diverged runs are an x near the bottom of
    the axis in their curve's colour, one row per curve. A mean over seeds of which some
    diverged (seeds < runs in the point) is labelled "2/3 seeds".
    """
    panels: dict[str, list[Mapping]] = {}
    for p in points:
        panels.setdefault(p.get("variant") or "", []).append(p)
    fig = Figure(figsize=(6.4 * max(1, len(panels)) * 0.8 + 1.3, 4.2), dpi=100)
    axes = fig.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)[0]
    cmap = matplotlib.colormaps["viridis"]
    curves = sorted({_curve_key(p) for p in points})  # (batch size, BN batch)
    colors = {c: cmap(i / max(1, len(curves) - 1)) for i, c in enumerate(curves)}
    lrs = [p["base_lr"] for p in points]
    for ax, (variant, group_points) in zip(axes, panels.items() or [("", [])]):
        failed = []
        for curve in curves:
            group = sorted((p for p in group_points if _curve_key(p) == curve),
                           key=lambda p: p["base_lr"])
            ok = [p for p in group if not p["diverged"] and p["accuracy"] is not None
                  and math.isfinite(p["accuracy"])]
            if any(p.get("accuracy_std") is not None for p in ok):
                ax.errorbar([p["base_lr"] for p in ok], [100 * p["accuracy"] for p in ok],
                            yerr=[100 * (p.get("accuracy_std") or 0.0) for p in ok], fmt="o-",
                            color=colors[curve], label=_curve_label(curve), capsize=3)
            else:
                ax.plot([p["base_lr"] for p in ok], [100 * p["accuracy"] for p in ok], "o-",
                        color=colors[curve], label=_curve_label(curve))
            for p in ok:  # a mean over only the seeds that did not diverge says so
                if p.get("runs") and p.get("seeds") is not None and p["seeds"] < p["runs"]:
                    ax.annotate(f"{p['seeds']}/{p['runs']} seeds", (p["base_lr"],
                                100 * p["accuracy"]), xytext=(4, -12),
                                textcoords="offset points", fontsize="x-small", color=colors[curve])
            row = 0.03 + 0.035 * curves.index(curve)  # one row of x per curve: no overlaps
            failed += [(p["base_lr"], row, colors[curve]) for p in group if p not in ok]
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
        ax.legend(fontsize="small", ncol=2 if len(curves) > 5 else 1)
    axes[0].set_ylabel(ylabel)
    return _save(fig, path)


def plot_train_loss(curves: Mapping[str, Curve], path: str, *,
                    title: str = "Training loss per epoch", ylabel: str = "training loss",
                    bands: Mapping[str, Sequence[float]] | None = None) -> str:
    """Training loss vs epoch, one line per run: {label: (epochs, loss)}; `bands` as in
    `plot_test_error`."""
    fig, ax = _figure()
    _lines(ax, curves, bands)
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
                       title: str = "Gradient L2 norm",
                       bands: Mapping[str, Sequence[float]] | None = None) -> str:
    """Gradient L2 norm over training: {label: (step, norm)}; `bands`: {label: std}."""
    fig, ax = _figure()
    _lines(ax, curves, bands)
    _log_if_wide(ax, curves)
    ax.set(xlabel=xlabel, ylabel=r"$\|g\|_2$", title=title)
    return _save(fig, path)


# Above this many variables a panel colours its lines by kind (one legend entry per kind):
# AlexNet-BN has 23 LARS variables, and 23 legend entries cover the panel.
MAX_VARIABLES_IN_LEGEND = 10
_KINDS = {"kernel": "kernels", "bias": "biases", "gamma": "BN gamma", "beta": "BN beta"}


def variable_kind(name: str) -> str:
    """'conv1_bn/gamma' -> 'BN gamma': what a LARS variable is, from its path's last part."""
    return _KINDS.get(name.rsplit("/", 1)[-1], "other")


def plot_lars_local_lr(panels: Mapping[str, Mapping[str, Curve]], path: str, *,
                       xlabel: str = "epoch", title: str | None = None) -> str:
    """Seed 004 Fig. 2: LARS local LR per layer over training, one panel per run.

    `panels`: {run label: {variable: (steps, local_lr)}}; `title` above all panels. A panel
    with more than MAX_VARIABLES_IN_LEGEND variables draws one colour per kind (kernels,
    biases, BN gamma, BN beta) with one legend entry each, so the lines stay visible.
    """
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), dpi=100)
    for i, (label, layers) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        by_kind = len(layers) > MAX_VARIABLES_IN_LEGEND
        counts = {k: sum(variable_kind(v) == k for v in layers)
                  for k in [*_KINDS.values(), "other"]}
        kinds = [k for k, c in counts.items() if c]
        first_line = {}  # kind -> its first line, the one in the legend
        for layer, (x, y) in layers.items():
            if not by_kind:
                ax.plot(x, y, label=layer, linewidth=1.2)
                continue
            kind = variable_kind(layer)
            (line,) = ax.plot(x, y, color=f"C{kinds.index(kind)}", linewidth=1.0, alpha=0.8,
                              label=f"{kind} ({counts[kind]})")
            first_line.setdefault(kind, line)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set(xlabel=xlabel, ylabel=r"local LR $\lambda^l$", title=label)
        ax.legend(handles=[first_line[k] for k in kinds] if by_kind else None,
                  fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_ba_onset(updates: Sequence[float], gap: Sequence[float], noise: Sequence[float],
                  batch: Sequence[float], path: str, *, m0: float,
                  title: str = "Eq. 7's gap against eta sigma / sqrt(m)") -> str:
    """Per update of a BA run: |s - S* - eta mu| against Eq. 7's noise term
    eta sigma / sqrt(m) on log axes (top; colour: the update, black: updates with m > m0,
    dashed: |a| = 1), and the batch m of every update (bottom)."""
    fig = Figure(figsize=(6.4, 7.0), dpi=100)
    top, bottom = fig.subplots(2, 1, height_ratios=[2, 1])
    x, y = np.asarray(noise, float), np.abs(np.asarray(gap, float))
    keep = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    grown = (np.asarray(batch, float) > m0) & keep
    dots = top.scatter(x[keep], y[keep], c=np.asarray(updates, float)[keep], s=2,
                       cmap="viridis", linewidths=0)
    fig.colorbar(dots, ax=top, label="update")
    if grown.any():
        top.scatter(x[grown], y[grown], s=6, color="black", label=f"m > {m0:g}")
    if keep.any():
        lo, hi = min(x[keep].min(), y[keep].min()), max(x[keep].max(), y[keep].max())
        top.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="|a| = 1")
    top.set(xscale="log", yscale="log", xlabel="eta sigma / sqrt(m)",
            ylabel="|s - S* - eta mu|", title=title)
    top.legend(fontsize="small")
    top.grid(alpha=0.3)
    bottom.step(np.asarray(updates, float), batch, where="post", linewidth=0.8)
    bottom.set(xlabel="iteration (update)", ylabel="batch size m")
    bottom.grid(alpha=0.3)
    return _save(fig, path)
