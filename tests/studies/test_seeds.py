"""Seeds as a grid axis (studies/seeds.py): expansion (also through the real CLI's --dry_run),
the per-grid-point summary checked against NumPy on hand-made results.json files, the manifest
and the mean +- std figures."""

import csv
import json
import math
import subprocess

import numpy as np
import pytest

from keras_largebatch.errors import UserInputError
from keras_largebatch.studies import grid, plot, seeds
from keras_largebatch.studies import sweep as sw
from keras_largebatch.studies.manifest import SWEEP_FILE, read_manifest
from keras_largebatch.studies.summary import point_rows, summary_rows, write_summary

from .test_plot import _epochs, _write_run
from .test_sweep import _sweep_cli, fake_python  # noqa: F401  (fixture)

PNG = b"\x89PNG\r\n\x1a\n"


def _study(**kwargs):
    return grid.sweep(**{"base_gin_files": ["gin/tests/tiny.gin"],
                         "base_bindings": ["train.epochs = 2"],
                         "variants": {"sgd": [], "lars": ["train.optimizer = 'lars'"]},
                         "grid": {"train.learning_rate": [0.1, 1.0]},
                         "metric": "final_test_accuracy", "seeds": [0, 1, 2], **kwargs})


def test_every_run_is_expanded_once_per_seed_with_seeds_outermost():
    study = _study()
    assert study.seeds == (0, 1, 2) and len(study.runs) == 12
    points = ["sgd__learning_rate=0.1", "sgd__learning_rate=1", "lars__learning_rate=0.1",
              "lars__learning_rate=1"]
    assert [r.name for r in study.runs] == [f"{p}__seed={s}" for s in (0, 1, 2) for p in points]
    run = study.runs[6]  # lars, lr 0.1, seed 1
    assert run.seed == 1 and run.params == {"train.learning_rate": 0.1}
    assert run.bindings == ("train.epochs = 2", "train.optimizer = 'lars'",
                            "train.learning_rate = 0.1", "train.seed = 1")
    assert seeds.split_name(run.name) == ("lars__learning_rate=0.1", 1)
    assert seeds.split_name("sgd__learning_rate=0.1") == ("sgd__learning_rate=0.1", None)
    assert list(seeds.group_by_point(r.name for r in study.runs)) == points
    # without sweep.seeds nothing changes: one run per point, no seed binding or name part
    plain = _study(seeds=None)
    assert [r.name for r in plain.runs] == points and plain.seeds == ()
    assert all(r.seed is None and "train.seed" not in " ".join(r.bindings) for r in plain.runs)


@pytest.mark.parametrize("kwargs, message", [
    ({"seeds": []}, "non-empty list"),
    ({"seeds": "0,1"}, "non-empty list"),
    ({"seeds": [0, 1.5]}, "entry 1.5"),
    ({"seeds": [0, True]}, "entry True"),
    ({"seeds": [0, -1]}, "entry -1"),
    ({"seeds": [1, 1]}, "repeats a seed"),
    ({"base_bindings": ["train.seed = 3"]}, "also binds"),
    ({"variants": {"a": ["train.seed = 3"]}}, "also binds"),
    ({"grid": {"train.seed": [1, 2]}}, "also binds"),
])
def test_bad_seeds_name_the_value(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        _study(**kwargs)


def test_real_cli_dry_run_prints_one_command_per_seed(tmp_path):
    study = tmp_path / "seeded.gin"
    study.write_text("# header\nsweep.base_gin_files = ['gin/tests/tiny.gin']\n"
                     "sweep.grid = {'train.batch_size': [32, 64]}\nsweep.seeds = [0, 7]\n")
    out = tmp_path / "out"
    cmd, kw = _sweep_cli(f"--gin_file={study}", f"--sweep_dir={out}", "--dry_run",
                         capture_output=True)
    done = subprocess.run(cmd, timeout=300, **kw)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    names = [line.rsplit("--run_dir=", 1)[1].rsplit("/", 1)[1] for line in lines]
    assert names == ["batch_size=32__seed=0", "batch_size=64__seed=0",
                     "batch_size=32__seed=7", "batch_size=64__seed=7"]
    assert all(f"'--gin_bindings=train.seed = {s}'" in line
               for line, s in zip(lines, (0, 0, 7, 7)))
    assert not out.exists()  # a dry run writes nothing


# ---- Aggregation against NumPy on hand-made results.json ----------------------------------------

ACC = {  # (point, seed) -> per-epoch test accuracy; seed 2 of lr=1 diverged
    ("learning_rate=0.1", 0): [0.60, 0.71, 0.80],
    ("learning_rate=0.1", 1): [0.62, 0.70, 0.83],
    ("learning_rate=0.1", 2): [0.58, 0.69, 0.78],
    ("learning_rate=1", 0): [0.50, 0.65, 0.74],
    ("learning_rate=1", 1): [0.40, 0.66, 0.77],
    ("learning_rate=1", 2): [0.10],
}


def _write(run_dir, accuracies, diverged=False):
    run_dir.mkdir(parents=True)
    epochs = [{"epoch": i + 1, "test_accuracy": a, "train_loss": 1.0 - a, "batch_size": 32,
               "samples_per_second": 1000.0, "epoch_time_s": 1.0 + i}
              for i, a in enumerate(accuracies)]
    if diverged:
        epochs[-1]["train_loss"] = math.nan
    (run_dir / "results.json").write_text(json.dumps(
        {"status": "diverged" if diverged else "completed", "epochs": epochs}))
    (run_dir / "config.gin").write_text("train.batch_size = 32\n")


@pytest.fixture
def seeded_sweep(tmp_path):
    study = grid.sweep(base_gin_files=["gin/tests/tiny.gin"],
                       grid={"train.learning_rate": [0.1, 1.0]}, seeds=[0, 1, 2],
                       metric="final_test_accuracy")
    for spec in study.runs:
        point, seed = seeds.split_name(spec.name)
        _write(tmp_path / spec.name, ACC[point, seed], diverged=(point, seed) == (
            "learning_rate=1", 2))
    rows = summary_rows(study, str(tmp_path), {})
    write_summary(study, str(tmp_path), rows, "seeded")
    return study, tmp_path, rows


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_summary_is_mean_and_sample_std_over_the_completed_seeds(seeded_sweep):
    study, out, rows = seeded_sweep
    points = _csv(out / "summary.csv")
    assert [p["run"] for p in points] == ["learning_rate=0.1", "learning_rate=1"]
    for p in points:
        done = [ACC[p["run"], s] for s in (0, 1, 2) if (p["run"], s) != ("learning_rate=1", 2)]
        final = np.array([a[-1] for a in done])
        best = np.array([max(a) for a in done])
        assert int(p["completed"]) == len(done) and int(p["seeds"]) == 3
        assert float(p["final_test_accuracy_mean"]) == pytest.approx(final.mean(), abs=1e-12)
        assert float(p["final_test_accuracy_std"]) == pytest.approx(final.std(ddof=1), abs=1e-12)
        assert float(p["best_test_accuracy_std"]) == pytest.approx(best.std(ddof=1), abs=1e-12)
        assert float(p["final_train_loss_mean"]) == pytest.approx((1 - final).mean(), abs=1e-12)
    assert points[1]["diverged"] == "1" and points[0]["diverged"] == "0"
    # the per-run rows move to summary_runs.csv, with the seed
    runs = _csv(out / "summary_runs.csv")
    assert [(r["run"], r["seed"], r["status"]) for r in runs][-1] == (
        "learning_rate=1__seed=2", "2", "diverged")
    md = (out / "summary.md").read_text()
    mean, std = np.mean([0.80, 0.83, 0.78]), np.std([0.80, 0.83, 0.78], ddof=1)
    assert f"| {mean:.4f} +- {std:.4f} (n=3) |" in md
    assert "Best grid point by mean `final_test_accuracy`: learning_rate=0.1" in md
    assert md.count("__seed=") == 6  # every run still listed


def test_one_seed_has_no_std_and_unseeded_studies_keep_one_row_per_run(seeded_sweep, tmp_path):
    study, _, rows = seeded_sweep
    one = point_rows(study, [r for r in rows if r["run"].endswith("seed=0")])
    assert one[0]["final_test_accuracy_mean"] == 0.80
    assert one[0]["final_test_accuracy_std"] is None
    assert seeds.mean_std([1.0, None, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    plain = grid.sweep(base_gin_files=["gin/tests/tiny.gin"],
                       grid={"train.learning_rate": [0.1, 1.0]})
    for spec in plain.runs:
        _write(tmp_path / "plain" / spec.name, [0.5, 0.6])
    write_summary(plain, str(tmp_path / "plain"), summary_rows(plain, str(tmp_path / "plain"),
                                                               {}), "plain")
    assert [r["run"] for r in _csv(tmp_path / "plain" / "summary.csv")] == [
        "learning_rate=0.1", "learning_rate=1"]
    assert not (tmp_path / "plain" / "summary_runs.csv").exists()
    assert "+-" not in (tmp_path / "plain" / "summary.md").read_text()


def test_mean_curve_matches_numpy_where_seeds_overlap():
    x, mean, std = seeds.mean_curve([([1, 2, 3], [1.0, 2.0, 3.0]), ([1, 2, 3], [3.0, 2.0, 5.0]),
                                     ([1], [2.0])])
    assert x == [1, 2, 3]
    assert mean == pytest.approx([2.0, 2.0, 4.0])
    assert std == pytest.approx([1.0, 0.0, np.std([3.0, 5.0], ddof=1)])


def test_run_sweep_writes_seeds_to_the_manifest(tmp_path, fake_python):  # noqa: F811
    study = grid.sweep(base_gin_files=["gin/tests/tiny.gin"],
                       grid={"train.learning_rate": [0.05, 1e6]}, seeds=[3, 4])
    rows = sw.run_sweep(study, sweep_dir=str(tmp_path), python=fake_python, poll_s=0.05,
                        echo=lambda *a: None)
    assert len(rows) == 4
    assert read_manifest(str(tmp_path))["seeds"] == [3, 4]
    points = _csv(tmp_path / "summary.csv")
    assert [(p["run"], p["completed"], p["diverged"]) for p in points] == [
        ("learning_rate=0.05", "2", "0"), ("learning_rate=1e+06", "0", "2")]
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"seeds": "0,1"}))
    with pytest.raises(UserInputError, match="'seeds'"):
        read_manifest(str(tmp_path))


def test_figures_of_a_seeded_sweep_are_means_with_error_bars(seeded_sweep):
    study, out, _ = seeded_sweep
    (out / SWEEP_FILE).write_text(json.dumps({
        "title": "seeded", "metric": "final_test_accuracy", "seeds": [0, 1, 2],
        "order": [r.name for r in study.runs], "runs": {}}))
    for spec in study.runs:  # a base-LR axis: the LR binding of each run
        lr = spec.params["train.learning_rate"]
        (out / spec.name / "config.gin").write_text(
            f"train.batch_size = 32\ntrain.learning_rate = {lr!r}\n")
    paths = plot.plot_sweep(str(out))
    assert {p.rsplit("/", 1)[-1] for p in paths} >= {"test_error.png", "train_loss.png",
                                                      "accuracy_vs_base_lr.png"}
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == PNG
    points = plot.seed_points([
        {"run": "a__seed=0", "batch_size": 8, "base_lr": 0.1, "accuracy": 0.7, "diverged": False},
        {"run": "a__seed=1", "batch_size": 8, "base_lr": 0.1, "accuracy": 0.8, "diverged": False},
        {"run": "a__seed=2", "batch_size": 8, "base_lr": 0.1, "accuracy": 0.1, "diverged": True},
        {"run": "b__seed=0", "batch_size": 8, "base_lr": 1.0, "accuracy": 0.1, "diverged": True},
    ])
    assert [(p["run"], p["seeds"], p["runs"], p["diverged"]) for p in points] == [
        ("a", 2, 3, False), ("b", 0, 1, True)]
    assert points[0]["accuracy"] == pytest.approx(0.75)
    assert points[0]["accuracy_std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))


def test_a_mean_over_the_seeds_that_did_not_diverge_is_labelled_with_their_count(
        tmp_path, monkeypatch):
    """A point whose mean leaves out diverged seeds must not look like a full 3-seed mean."""
    from keras_largebatch.studies import figures
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: figs.append(fig) or path)
    runs = [("a", 0.1, [0.7, 0.8, None]), ("b", 1.0, [0.6, 0.65, 0.7])]
    points = plot.seed_points([
        {"run": f"{name}__seed={i}", "batch_size": 8, "base_lr": lr, "accuracy": acc or 0.1,
         "diverged": acc is None} for name, lr, accs in runs for i, acc in enumerate(accs)])
    plot.plot_accuracy_vs_base_lr(points, str(tmp_path / "x.png"))
    (ax,) = figs[0].axes
    assert [t.get_text() for t in ax.texts] == ["2/3 seeds"]
    assert ax.texts[0].xy == pytest.approx((0.1, 75.0))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["m = 8"]  # one curve


def test_a_mean_curve_missing_a_diverged_seed_says_how_many_seeds_it_averages(
        tmp_path, monkeypatch):
    """Test error over epochs: a seed that diverged before its first epoch (no curve) or
    stopped early is left out of the later mean, and the legend says so."""
    accs = {("a", 0): [0.5, 0.6, 0.7], ("a", 1): [0.6, 0.7, 0.8], ("a", 2): [],
            ("b", 0): [0.5, 0.6, 0.7], ("b", 1): [0.4, 0.5, 0.6], ("b", 2): [0.3],
            ("c", 0): [0.5, 0.6, 0.7], ("c", 1): [0.4, 0.6, 0.6], ("c", 2): [0.3, 0.4, 0.5]}
    for (point, seed), values in accs.items():
        _write_run(tmp_path / f"{point}__seed={seed}", epochs=_epochs(values),
                   status="diverged" if len(values) < 3 else "completed",
                   config="train.batch_size = 32\n")
    (tmp_path / SWEEP_FILE).write_text(json.dumps({
        "title": "t", "metric": "final_test_accuracy", "seeds": [0, 1, 2],
        "order": [f"{p}__seed={s}" for p, s in accs], "runs": {}}))
    seen = {}
    monkeypatch.setattr(plot, "plot_test_error", lambda curves, path, **kw: seen.update(
        curves=curves, bands=kw["bands"]) or path)
    plot.plot_sweep(str(tmp_path))
    assert sorted(seen["curves"]) == ["a (2/3 seeds)", "b (2/3 seeds)", "c"]
    np.testing.assert_allclose(seen["curves"]["a (2/3 seeds)"][1], [45.0, 35.0, 25.0])
    np.testing.assert_allclose(seen["curves"]["b (2/3 seeds)"][1],
                               [100 - 40.0, 100 - 55.0, 100 - 65.0])  # epoch 1: 3 seeds


def test_gradient_norm_of_a_seeded_sweep_is_the_mean_and_per_update_figures_say_first_seed(
        tmp_path, monkeypatch):
    """Each grid point's gradient norm is the mean over its seeds with a sample-std band;
    the per-update figure (batch size per update) shows seed 0 and its title says so."""
    norms = {("a", 0): [3.0, 2.0, 1.0], ("a", 1): [5.0, 2.5, 2.0], ("b", 0): [1.0, 1.0, 0.5],
             ("b", 1): [1.5, 0.5, 0.5]}
    for (point, seed), values in norms.items():
        _write_run(tmp_path / f"{point}__seed={seed}", epochs=_epochs([0.5, 0.6, 0.7]),
                   config="train.batch_size = 32\n",
                   scalars={"train/gradient_norm": list(zip([1, 2, 3], values)),
                            "ba/batch_size": [(i, 32 + 32 * seed) for i in range(5)]})
    (tmp_path / SWEEP_FILE).write_text(json.dumps({
        "title": "norms", "metric": "final_test_accuracy", "seeds": [0, 1],
        "order": [f"{p}__seed={s}" for p, s in norms], "runs": {}}))
    seen = {}
    monkeypatch.setattr(plot, "plot_gradient_norm", lambda curves, path, **kw: seen.update(
        norm=(curves, kw["bands"], kw["title"])) or path)
    monkeypatch.setattr(plot, "plot_batch_size_per_update", lambda curves, path, **kw: seen.update(
        sizes=(curves, kw["title"])) or path)
    plot.plot_sweep(str(tmp_path))
    curves, bands, title = seen["norm"]
    for point in ("a", "b"):
        both = np.array([norms[point, 0], norms[point, 1]])
        np.testing.assert_allclose(curves[point][1], both.mean(axis=0))
        np.testing.assert_allclose(bands[point], both.std(axis=0, ddof=1))
    assert "mean +- std over seeds 0, 1" in title
    sizes, title = seen["sizes"]
    assert set(np.asarray(sizes["a"][1])) == {32.0}  # seed 0's batch, not a mean with seed 1's
    assert "seed 0 of each point" in title and "mean" not in title


def test_gradient_norm_figure_when_the_first_point_lost_a_seed(tmp_path, monkeypatch):
    """The first point's curve is labelled "a (1/2 seeds)"; the figure still finds its run
    (the x label comes from it) instead of failing on the bare point name."""
    norms = {("a", 0): [3.0, 2.0, 1.0], ("a", 1): [5.0], ("b", 0): [1.0, 1.0, 0.5],
             ("b", 1): [1.5, 0.5, 0.5]}
    for (point, seed), values in norms.items():
        _write_run(tmp_path / f"{point}__seed={seed}", epochs=_epochs([0.5, 0.6, 0.7]),
                   status="diverged" if len(values) < 3 else "completed",
                   config="train.batch_size = 32\n",
                   scalars={"train/gradient_norm": list(zip([100, 200, 300], values))})
    (tmp_path / SWEEP_FILE).write_text(json.dumps({
        "title": "norms", "metric": "final_test_accuracy", "seeds": [0, 1],
        "order": [f"{p}__seed={s}" for p, s in norms], "runs": {}}))
    seen = {}
    monkeypatch.setattr(plot, "plot_gradient_norm", lambda curves, path, **kw: seen.update(
        curves=curves, xlabel=kw["xlabel"]) or path)
    plot.plot_sweep(str(tmp_path))
    assert list(seen["curves"]) == ["a (1/2 seeds)", "b"]
    np.testing.assert_allclose(seen["curves"]["a (1/2 seeds)"][1], [4.0, 2.0, 1.0])
    assert seen["xlabel"] == "step"  # 300 updates > 3 epochs
