"""<sweep_dir>/summary.csv and summary.md: one row per run of a study.

    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin

rewrites both after every run (and at its start): grid values, status, diverged_epoch, every
METRICS value and the error of a failed run; summary.md leads with the study's metric and names
the best completed run by it.

With `sweep.seeds` (studies/seeds.py) summary.csv has one row per grid point instead: the
number of seeds, of completed / diverged / other runs, and `<metric>_mean` / `<metric>_std`
(sample std, ddof 1, over the completed seeds) of every METRICS value; the per-run rows move
to summary_runs.csv (with a `seed` column), and summary.md shows the grid points as
`mean +- std (n)` above the per-run table.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping

from keras_largebatch import files
from keras_largebatch.studies import results as rs
from keras_largebatch.studies.grid import Study
from keras_largebatch.studies.metrics import METRICS, headline, run_metrics
from keras_largebatch.studies.results import number, read_results
from keras_largebatch.studies.seeds import mean_std, split_name

# The columns summary.md shows as mean +- std per grid point (besides the study's metric).
SEED_COLUMNS = ("final_test_accuracy", "best_test_accuracy")


def summary_rows(study: Study, sweep_dir: str, state: Mapping[str, dict]) -> list[dict]:
    """One row per run of `study`: its metrics when finished, else its state from sweep.json."""
    rows = []
    for spec in study.runs:
        row = {"run": spec.name}
        if any(r.variant for r in study.runs):
            row["variant"] = spec.variant or ""
        row.update(spec.params)
        if spec.seed is not None:
            row["seed"] = spec.seed
        results = read_results(os.path.join(sweep_dir, spec.name))
        info = state.get(spec.name, {})
        if results is not None and results.get(rs.STATUS) in rs.FINAL_STATUSES:
            row.update(run_metrics(results, loss_upper_bound=study.loss_upper_bound))
            row["error"] = ""
        else:
            row.update({"status": info.get("status", "pending"), "diverged_epoch": None,
                        "epochs": len((results or {}).get(rs.EPOCHS) or [])})
            row.update(dict.fromkeys(METRICS))
            row["error"] = info.get("error", "")
        rows.append(row)
    return rows


def cell(value, metric: bool = False) -> str:
    """A summary table cell: metrics to 4 decimals (4 significant digits below 0.001, so a
    training loss of 2.6e-6 does not read 0.0000), other floats in %g, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if metric and math.isfinite(value) and (1e-3 <= abs(value) < 1e4 or value == 0):
            return f"{value:.4f}"
        return format(value, ".4g" if metric else "g")
    return str(value)


def point_rows(study: Study, rows: list[dict]) -> list[dict]:
    """One row per grid point of a study with seeds: counts, and mean / sample std over the
    completed seeds of every METRICS value (module docstring)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(split_name(row["run"])[0], []).append(row)
    points = []
    for point, group in groups.items():
        first = group[0]
        out = {"run": point}
        out.update({k: v for k, v in first.items()
                    if k in ("variant", *study.grid_keys)})
        done = [r for r in group if r["status"] == rs.COMPLETED]
        diverged = sum(r["status"] == rs.DIVERGED for r in group)
        out.update({"seeds": len(group), "completed": len(done), "diverged": diverged,
                    "other": len(group) - len(done) - diverged})
        for m in METRICS:
            mean, std, _ = mean_std(r.get(m) for r in done)
            out[f"{m}_mean"], out[f"{m}_std"] = mean, std
        points.append(out)
    return points


def _write_csv(path: str, rows: list[dict]) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def pm(mean, std, n: int | None = None) -> str:
    """`mean +- std (n=3)` of a summary.md cell (metrics to 4 decimals; empty without a mean)."""
    if mean is None:
        return ""
    text = cell(mean, True) + (f" +- {cell(std, True)}" if std is not None else "")
    return text + (f" (n={n})" if n is not None else "")


def _point_lines(study: Study, points: list[dict]) -> list[str]:
    """summary.md's table of grid points (mean +- std over seeds) and the best point."""
    metric = study.metric
    shown = headline(metric)  # selected on validation: the test accuracy there next
    shown += [c for c in SEED_COLUMNS if c not in shown]
    keys = ["run"] + [k for k in ("variant", *study.grid_keys) if k in points[0]]
    cols = keys + ["seeds", "completed", "diverged"] + shown
    lines = [f"Mean +- sample std over the completed seeds (n = completed), seeds "
             f"{', '.join(map(str, study.seeds))}:", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for p in points:
        cells = [cell(p.get(c)) for c in keys + ["seeds", "completed", "diverged"]]
        cells += [pm(p[f"{m}_mean"], p[f"{m}_std"], p["completed"]) for m in shown]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    scored = [p for p in points if p[f"{metric}_mean"] is not None]
    if scored:
        best = (max if METRICS[metric][1] else min)(scored, key=lambda p: p[f"{metric}_mean"])
        lines += ["", f"Best grid point by mean `{metric}`: {best['run']} ("
                  f"{pm(best[f'{metric}_mean'], best[f'{metric}_std'], best['completed'])})."]
    return lines + ["", "Runs:", ""]


def write_summary(study: Study, sweep_dir: str, rows: list[dict], title: str) -> None:
    """<sweep_dir>/summary.csv (every column) and summary.md (headline metric first); with
    seeds, summary.csv per grid point and summary_runs.csv per run (module docstring)."""
    fields = list(rows[0])
    if study.seeds:
        points = point_rows(study, rows)
        _write_csv(os.path.join(sweep_dir, "summary.csv"), points)
        _write_csv(os.path.join(sweep_dir, "summary_runs.csv"), rows)
    else:
        _write_csv(os.path.join(sweep_dir, "summary.csv"), rows)

    metric = study.metric
    cols = [c for c in fields if c not in METRICS and c != "error"]
    shown = headline(metric)
    cols += shown + [m for m in METRICS if m not in shown] + ["error"]
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"]
                                                                            for r in rows)}
    lines = [f"# Sweep {title}", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"Metric: `{metric}`, {METRICS[metric][0]}. Runs: {len(rows)} ("
              + ", ".join(f"{n} {s}" for s, n in counts.items()) + ").", ""]
    if study.seeds:
        lines += _point_lines(study, points)
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c), c in METRICS).replace("|", "/") for c in cols)
              + " |" for r in rows]
    scored = [r for r in rows if r["status"] == "completed" and number(r.get(metric)) is not None
              and math.isfinite(r[metric])]
    if scored and not study.seeds:  # with seeds: the best grid point, above
        best = (max if METRICS[metric][1] else min)(scored, key=lambda r: r[metric])
        lines += ["", f"Best completed run by `{metric}`: {best['run']} "
                  f"({cell(best[metric], True)})."]
    files.write_text_atomic(os.path.join(sweep_dir, "summary.md"), "\n".join(lines) + "\n")
