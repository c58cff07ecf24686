"""Plots: every figure renders a PNG from fixture runs written here (results.json + real
TensorBoard events via tf.summary), and `plot_dir` picks the figures a run or sweep supports."""

import json
import math
import subprocess
import sys

import matplotlib.image
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import plot
from keras_largebatch.studies.manifest import SWEEP_FILE

from ..cli import REPO

PNG = b"\x89PNG\r\n\x1a\n"


def _epochs(accuracies, batch_size=32, repeats=1, losses=None):
    return [{"epoch": i + 1, "test_accuracy": a, "train_loss": (losses or [2.0 / (i + 1)] * 9)[i],
             "train_accuracy": a, "test_loss": 1.0, "learning_rate": 0.1,
             "batch_size": batch_size, "effective_batch_size": batch_size * repeats,
             "samples_per_second": 1000.0, "epoch_time_s": batch_size * 10 / 1000.0}
            for i, a in enumerate(accuracies)]


def _write_run(run_dir, *, epochs, status="completed", config="", scalars=None):
    """A run folder as the CLI leaves it: results.json, config.gin, tensorboard/ events."""
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"status": status, "epochs": epochs}))
    (run_dir / "config.gin").write_text(config)
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    with writer.as_default():
        for tag, points in (scalars or {}).items():
            for step, value in points:
                tf.summary.scalar(tag, value, step=step)
        tf.summary.text("config", config or "empty", step=0)  # non-scalars are skipped
    writer.close()
    return run_dir


@pytest.fixture(scope="module")
def lars_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plot") / "lars_run"
    scalars = {
        "lars/trust_ratio/conv1/kernel": [(1, 0.02), (2, 0.01), (3, 0.005)],
        "lars/trust_ratio/dense/kernel": [(1, 0.5), (2, 0.2), (3, 0.1)],
        "train/gradient_norm": [(1, 3.0), (2, 2.0), (3, 1.5)],
        "ba/batch_size": [(i, 32 + 4 * (i // 5)) for i in range(40)],
        "train/loss": [(1, 2.0), (2, 1.0), (2, 0.9), (3, 0.5)],  # step 2 rewritten (resume)
    }
    return _write_run(run_dir, epochs=_epochs([0.5, 0.6, 0.7]), scalars=scalars,
                      config="train.batch_size = 32\ntrain.learning_rate = 0.1\n")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Seed 001 / 003 style sweep: batch size x base LR (one diverged), M differs by batch."""
    root = tmp_path_factory.mktemp("plot") / "sweep"
    names = []
    for m, repeats in ((32, 1), (256, 4)):
        for lr in (2.0 ** -8, 2.0 ** -6):
            name = f"batch_size={m}__learning_rate={lr:g}"
            names.append(name)
            diverged = m == 256 and lr == 2.0 ** -6  # stopped inside epoch 1: no epochs
            acc = [] if diverged else [0.5, 0.6, 0.65, 0.7, 0.72, 0.71]
            _write_run(root / name, status="diverged" if diverged else "completed",
                       epochs=_epochs(acc, batch_size=m, repeats=repeats),
                       config=f"train.batch_size = {m}\ntrain.learning_rate = {lr!r}\n"
                              "train.lr_scaling = 'linear'\n")
    (root / SWEEP_FILE).write_text(json.dumps({
        "title": "fixture", "metric": "median_last5_test_accuracy", "order": names, "runs": {}}))
    return root


def test_every_plot_function_renders_a_png(tmp_path):
    curve = ([1, 2, 3], [40.0, 30.0, 25.0])
    paths = [
        plot.plot_test_error({"a": curve, "b": curve}, str(tmp_path / "a.png")),
        plot.plot_accuracy_vs_base_lr(
            [{"batch_size": 8, "base_lr": 2.0 ** -k, "accuracy": 0.8, "diverged": k < 4}
             for k in range(2, 8)], str(tmp_path / "b.png")),
        plot.plot_train_loss({"a": curve}, str(tmp_path / "c1.png")),
        plot.plot_batch_size_per_update({"a": ([0, 10, 20], [32, 64, 64])},
                                        str(tmp_path / "c2.png")),
        plot.plot_gradient_norm({"M = 1": curve, "M = 4": curve}, str(tmp_path / "d.png")),
        plot.plot_lars_local_lr({"B = 8k": {"conv1": curve, "fc": curve}},
                                str(tmp_path / "e.png")),
    ]
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        assert data.startswith(PNG) and len(data) > 5000, path


@pytest.mark.parametrize("title,wrapped", [
    ("Training loss: ba_fixed_budget_seeds (mean +- std over seeds 0, 1, 2)", True),  # was cut
    ("Gradient L2 norm: " + " ".join(f"variant_{i}" for i in range(20)), True),
    ("Training loss: adabatch", False),
    # fitted without a margin, this one ended 0.4 px from the right edge
    ("Training loss: " + "x" * 24 + " (mean +- std over seeds 0, 1, 2)", True),
])
def test_a_long_title_is_wrapped_inside_the_figure_not_cut(tmp_path, monkeypatch, title,
                                                          wrapped):
    from keras_largebatch.studies import figures
    saved = []
    real_save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.append(fig) or real_save(
        fig, path))
    plot.plot_train_loss({"a": ([1, 2, 3], [0.4, 0.3, 0.2])}, str(tmp_path / "t.png"),
                         title=title)
    (fig,) = saved
    (ax,) = fig.axes
    box = ax.title.get_window_extent()
    margin = 0.05 * fig.dpi  # 5 px clear of the PNG's edges, left and right
    assert box.x0 >= margin and box.x1 <= fig.bbox.width - margin
    assert ax.title.get_text().split() == title.split()  # every word kept, in order
    assert (len(ax.title.get_text().splitlines()) > 1) == wrapped


def test_lars_panel_with_many_variables_has_one_legend_entry_per_kind(tmp_path, monkeypatch):
    from keras_largebatch.studies import figures
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig) or path)
    curve = ([1, 2, 3], [1e-2, 2e-2, 3e-2])
    many = {f"conv{i}/kernel": curve for i in range(5)}  # 26 variables, 4 kinds
    many |= {f"conv{i}_bn/{p}": curve for i in range(5) for p in ("gamma", "beta")}
    many |= {"fc1/kernel": curve, "logits/kernel": curve, "logits/bias": curve} | {
        f"fc{i}_bn/{p}": curve for i in (1, 2, 3, 4) for p in ("gamma", "beta")}
    few = {"conv1/kernel": curve, "fc/kernel": curve}
    plot.plot_lars_local_lr({"bn": many, "no bn": few}, str(tmp_path / "x.png"))
    bn_ax, few_ax = figs[0].axes
    assert len(bn_ax.get_lines()) == 26 and len(few_ax.get_lines()) == 2
    legend = [t.get_text() for t in bn_ax.get_legend().get_texts()]
    assert legend == ["kernels (7)", "biases (1)", "BN gamma (9)", "BN beta (9)"]
    colours = {}
    for line, name in zip(bn_ax.get_lines(), many):
        colours.setdefault(figures.variable_kind(name), set()).add(line.get_color())
    assert all(len(c) == 1 for c in colours.values()) and len(set.union(*colours.values())) == 4
    assert [t.get_text() for t in few_ax.get_legend().get_texts()] == list(few)


def test_read_scalars_keeps_the_last_value_of_a_rewritten_step(lars_run):
    scalars = plot.read_scalars(str(lars_run / "tensorboard"))
    steps, values = scalars["train/loss"]
    assert steps.tolist() == [1, 2, 3] and values.tolist() == pytest.approx([2.0, 0.9, 0.5])
    assert "config" not in scalars  # text summaries are not scalars


def test_run_folder_gets_every_figure_its_data_supports(lars_run):
    paths = plot.plot_dir(str(lars_run))
    names = {p.rsplit("/", 1)[-1] for p in paths}
    assert names == {"test_error.png", "train_loss.png", "batch_size_per_update.png",
                     "gradient_norm.png", "lars_local_lr.png"}
    run = plot.Run(str(lars_run))
    assert set(run.lars_local_lr()) == {"conv1/kernel", "dense/kernel"}
    assert list(run.batch_size_per_update()[1][-3:]) == [60, 60, 60]  # BA tag, per update
    images = set()
    for path in (lars_run / "tensorboard" / plot.PLOTS_SUBDIR).glob("events.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            images.update(v.tag for v in event.summary.value)
    assert images == {n[:-4] for n in names}
    plot.plot_dir(str(lars_run))  # regenerating replaces the images, not adds to them
    assert len(list((lars_run / "tensorboard" / plot.PLOTS_SUBDIR).glob("events.*"))) == 1


def test_sweep_folder_gets_the_base_lr_and_per_M_figures(sweep_dir):
    names = {p.rsplit("/", 1)[-1] for p in plot.plot_dir(str(sweep_dir), tensorboard=False)}
    assert {"accuracy_vs_base_lr.png", "test_error.png", "train_loss.png",
            "test_error_by_M.png"} <= names
    assert "lars_local_lr.png" not in names  # no LARS run in this sweep
    runs = [plot.Run(str(p)) for p in sorted(sweep_dir.glob("batch_size=*"))]
    scores = {r.label: {"status": r.results["status"], "acc": 0.7} for r in runs}
    points = {(p["batch_size"], p["base_lr"]): p["diverged"]
              for p in plot.base_lr_points(runs, scores, metric="acc")}
    assert points == {(32, 2.0 ** -8): False, (32, 2.0 ** -6): False,
                      (256, 2.0 ** -8): False, (256, 2.0 ** -6): True}


def test_base_lr_follows_the_runs_scaling_rule(tmp_path, sweep_dir):
    linear = plot.Run(str(sweep_dir / "batch_size=256__learning_rate=0.00390625"))
    assert linear.base_lr() == 2.0 ** -8  # lr_scaling 'linear', reference 1: the LR is eta/m
    plain = _write_run(tmp_path / "plain", epochs=_epochs([0.5], batch_size=128),
                       config="train.batch_size = 128\ntrain.learning_rate = 0.1\n")
    assert math.isclose(plot.Run(str(plain)).base_lr(), 0.1 / 128)
    assert plot.Run(str(plain)).repeats == 1


def test_warmup_variants_get_one_panel_each_not_one_mixed_curve(tmp_path):
    """seed 001 plots warmup and no warmup separately: runs with the same (m, eta~) but a
    different sweep variant must not share a curve."""
    runs = []
    for variant, acc in (("warmup", 0.8), ("no_warmup", 0.6)):
        for lr in (2.0 ** -8, 2.0 ** -6):
            name = f"{variant}__train.batch_size=8__StepDecay.initial={lr:g}"
            runs.append(plot.Run(str(_write_run(
                tmp_path / name, epochs=_epochs([acc], batch_size=8),
                config=f"train.batch_size = 8\nStepDecay.initial = {lr!r}\n"
                       "train.lr_scaling = 'linear'\n"))))
    assert [r.variant for r in runs] == ["warmup"] * 2 + ["no_warmup"] * 2
    assert plot.Run(str(tmp_path / "batch_size=8__lr=1")).variant is None  # grid-only name
    scores = {r.label: {"status": "completed", "acc": r.epochs[0]["test_accuracy"]}
              for r in runs}
    points = plot.base_lr_points(runs, scores, metric="acc", lr_key="StepDecay.initial")
    assert {(p["variant"], p["base_lr"], p["accuracy"]) for p in points} == {
        ("warmup", 2.0 ** -8, 0.8), ("warmup", 2.0 ** -6, 0.8),
        ("no_warmup", 2.0 ** -8, 0.6), ("no_warmup", 2.0 ** -6, 0.6)}
    one = plot.plot_accuracy_vs_base_lr([p for p in points if p["variant"] == "warmup"],
                                        str(tmp_path / "one.png"))
    two = plot.plot_accuracy_vs_base_lr(points, str(tmp_path / "two.png"))
    width = {k: matplotlib.image.imread(v).shape[1] for k, v in (("one", one), ("two", two))}
    assert width["two"] > 1.7 * width["one"]  # two panels side by side


def test_bn_batches_at_one_sgd_batch_get_one_curve_each(tmp_path, monkeypatch):
    """seed 001 Fig. 13: SGD batch 128 with BN batch 8 / 32 / 128 are three curves (each over
    the base LRs), not one zigzag through nine points of "m = 128"."""
    from keras_largebatch.studies import figures
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig) or path)
    runs, acc = [], {8: 0.8, 32: 0.7, 128: 0.6}
    for bn in (8, 32, 128):
        for lr in (2.0 ** -8, 2.0 ** -6):
            name = f"bn_batch_size={bn}__StepDecay.initial={lr:g}"
            runs.append(plot.Run(str(_write_run(
                tmp_path / name, epochs=_epochs([acc[bn]], batch_size=128),
                config=f"train.batch_size = 128\nalexnet_reduced.bn_batch_size = {bn}\n"
                       f"StepDecay.initial = {lr!r}\ntrain.lr_scaling = 'linear'\n"))))
    plain = plot.Run(str(_write_run(tmp_path / "plain", epochs=_epochs([0.5], batch_size=128),
                                    config="alexnet_reduced.bn_batch_size = None\n")))
    assert [r.bn_batch_size for r in runs[::2]] == [8, 32, 128] and plain.bn_batch_size is None
    scores = {r.label: {"status": "completed", "acc": r.epochs[0]["test_accuracy"]}
              for r in runs}
    points = plot.base_lr_points(runs, scores, metric="acc", lr_key="StepDecay.initial")
    plot.plot_accuracy_vs_base_lr(points, str(tmp_path / "bn.png"))
    (ax,) = figs[0].axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"m = 128, BN batch 8": [80.0, 80.0], "m = 128, BN batch 32": [70.0, 70.0],
                     "m = 128, BN batch 128": [60.0, 60.0]}


def test_cli_rejects_a_missing_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "keras_largebatch.studies.plot",
                           str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nope'} is not a folder; pass a run or sweep folder"]


def test_a_subset_of_a_sweep_plots_into_its_own_folder(sweep_dir, tmp_path):
    out = tmp_path / "m256"
    names = {p.rsplit("/", 1)[-1] for p in plot.plot_dir(
        str(sweep_dir), tensorboard=False, runs_glob="batch_size=256__*", out_dir=str(out))}
    # Only the m = 256 runs (all M = 4): no per-M figure, which the whole sweep gets.
    assert "test_error.png" in names and "test_error_by_M.png" not in names
    assert (out / "test_error.png").read_bytes().startswith(PNG)
    assert not (sweep_dir / "m256").exists()
    one_run = sweep_dir / "batch_size=32__learning_rate=0.00390625"
    with pytest.raises(UserInputError, match="is one run; --runs and --out_dir apply to sweep"):
        plot.plot_dir(str(one_run), tensorboard=False, out_dir=str(out))


def test_cli_rejects_a_runs_glob_that_matches_nothing(sweep_dir):
    proc = subprocess.run([sys.executable, "-m", "keras_largebatch.studies.plot", str(sweep_dir),
                           "--runs=boom_*", "--notensorboard"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: no run in {sweep_dir} matches --runs='boom_*'; its runs: batch_size=32__")


def test_training_loss_figure_uses_the_whole_training_set_when_every_run_has_it(
        tmp_path, monkeypatch):
    """seed 002 Figs 1-2 plot the loss on the whole training set (train.eval_train_set), not
    the epoch's running mean; runs without it fall back to the running mean for all."""
    seen = {}
    monkeypatch.setattr(plot, "plot_train_loss",
                        lambda curves, path, **kw: seen.update(curves=curves, **kw) or path)
    epochs = _epochs([0.5, 0.6])
    for e, whole in zip(epochs, (0.9, 0.4)):
        e["full_train_loss"] = whole
    with_whole = plot.Run(str(_write_run(tmp_path / "a", epochs=epochs)))
    plot._common_plots([with_whole], str(tmp_path), "t")
    assert seen["curves"] == {"a": ([1, 2], [0.9, 0.4])}
    assert seen["ylabel"] == "loss on the whole training set"
    without = plot.Run(str(_write_run(tmp_path / "b", epochs=_epochs([0.5, 0.6]))))
    plot._common_plots([with_whole, without], str(tmp_path), "t")
    assert seen["curves"]["a"] == ([1, 2], [2.0, 1.0]) and seen["ylabel"].endswith("mean)")
