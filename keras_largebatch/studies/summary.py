"""<sweep_dir>/summary.csv and summary.md: one row per run of a study.

    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin

rewrites both after every run (and at its start): grid values, status, diverged_epoch, every
METRICS value and the error of a failed run; summary.md leads with the study's metric and names
the best completed run by it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping

from keras_largebatch import files
from keras_largebatch.studies import results as rs
from keras_largebatch.studies.grid import Study
from keras_largebatch.studies.metrics import METRICS, run_metrics
from keras_largebatch.studies.results import number, read_results


def summary_rows(study: Study, sweep_dir: str, state: Mapping[str, dict]) -> list[dict]:
    """One row per run of `study`: its metrics when finished, else its state from sweep.json."""
    rows = []
    for spec in study.runs:
        row = {"run": spec.name}
        if any(r.variant for r in study.runs):
            row["variant"] = spec.variant or ""
        row.update(spec.params)
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
    """A summary table cell: metrics to 4 decimals, other floats in %g, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if metric and math.isfinite(value) and abs(value) < 1e4:
            return f"{value:.4f}"
        return format(value, ".4g" if metric else "g")
    return str(value)


def write_summary(study: Study, sweep_dir: str, rows: list[dict], title: str) -> None:
    """<sweep_dir>/summary.csv (every column) and summary.md (headline metric first)."""
    fields = list(rows[0])
    tmp = os.path.join(sweep_dir, ".summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, os.path.join(sweep_dir, "summary.csv"))

    metric = study.metric
    cols = [c for c in fields if c not in METRICS and c != "error"]
    cols += [metric] + [m for m in METRICS if m != metric] + ["error"]
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"]
                                                                            for r in rows)}
    lines = [f"# Sweep {title}", ""]
    if study.description:
        lines += [study.description, ""]
    lines += [f"Metric: `{metric}`, {METRICS[metric][0]}. Runs: {len(rows)} ("
              + ", ".join(f"{n} {s}" for s, n in counts.items()) + ").", ""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c), c in METRICS).replace("|", "/") for c in cols)
              + " |" for r in rows]
    scored = [r for r in rows if r["status"] == "completed" and number(r.get(metric)) is not None
              and math.isfinite(r[metric])]
    if scored:
        best = (max if METRICS[metric][1] else min)(scored, key=lambda r: r[metric])
        lines += ["", f"Best completed run by `{metric}`: {best['run']} "
                  f"({cell(best[metric], True)})."]
    files.write_text_atomic(os.path.join(sweep_dir, "summary.md"), "\n".join(lines) + "\n")
