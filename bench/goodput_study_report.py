"""The report of bench/goodput_study.py, from the files it keeps (no TensorFlow, no runs):

    .venv/bin/python bench/goodput_study.py --report_only [--out=runs/results/goodput_cluster]

1. Per link rate and arm, over the seeds: the batch of each epoch, the training time (sum of
   `epoch_time_s`, epoch 1 replaced by the median later epoch at its batch among the seed's
   runs at that rate, as bench/cluster.py does), the final test accuracy, and the time to reach
   the target = fixed 128's final test accuracy on the same seed minus 0.5 points (the epoch
   times summed up to the first epoch at or above it; "-" if no epoch reaches it).
2. The goals of issue 29 as paired differences over seeds with a 95% t-interval
   (keras_largebatch.studies.intervals): GoodputBatch's time to target minus AdaBatch's (goal:
   <= 0, i.e. at least as fast), and GoodputBatch's final accuracy minus fixed 128's (goal:
   within 0.5 points). A goal is "met" when the whole interval satisfies it, "not met" when the
   whole interval violates it, "inconclusive" otherwise.
3. The throughput model (keras_largebatch.goodput.throughput) out of sample: fitted to every
   epoch of the study at global batches 128 and 1024 (both rates, all seeds: per-update
   `step_time_s`) and to the validation's one-worker run at its smallest batch (without it the
   constant of a step and the constant of an all-reduce are one number: every study run has 2
   workers), then asked for what it was not fitted on: the epochs at 256 and 512 (another
   batch), the validation's 2-worker run (another link rate, and a batch the fit did not see at
   any rate) and its one-worker run at the larger batch. Each row: the measured per-update time
   (mean over the epochs and seeds at that point), the prediction, and the error. Issue 29's
   bar: within 15%.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import netns
from cluster_report import Measured, fill_times, time_to_accuracy

ARMS = (("fixed_128", "fixed 128"), ("fixed_1024", "fixed 1024"),
        ("adabatch_128_1024", "adabatch 128->1024"), ("goodput_128..1024", "goodput 128..1024"))
FIT_BATCHES = (128, 1024)
GOAL_ERROR = 0.15


def load(out: Path) -> tuple[dict, dict, dict, int]:
    """(study settings, {rate: {arm: [Measured per seed]}}, validation {name: results}, P)."""
    study = json.loads((out / "study.json").read_text())
    runs: dict[str, dict[str, list]] = {}
    params = 0
    for seed in study["seeds"]:
        folder = out / f"seed{seed}"
        if not (folder / "cluster.log").exists():
            continue  # a seed not (yet) run
        params = params or parse_params(folder / "cluster.log")
        for rate in study["rates"]:
            group = []
            for arm, label in ARMS:
                path = folder / rate / f"{arm}_2w.json"
                if path.exists():
                    group.append(Measured(label, 2, rate, json.loads(path.read_text()),
                                          batches=[]))
            fill_times(group)
            for m in group:
                m.batches = [e["batch_size"] for e in m.results["epochs"]]
                runs.setdefault(rate, {}).setdefault(m.label, []).append(m)
    validation = {}
    vfolder = out / "validation"
    if (vfolder / "cluster.log").exists():
        params = params or parse_params(vfolder / "cluster.log")
        for path in sorted(vfolder.glob("*/*.json")):
            validation[f"{path.parent.name}/{path.stem}"] = json.loads(path.read_text())
    return study, runs, validation, params


def parse_params(log: Path) -> int:
    m = re.search(r"model \S+: ([\d,]+) parameters", log.read_text())
    if not m:
        raise ValueError(f"{log}: no 'model ...: N parameters' line")
    return int(m[1].replace(",", ""))


def _mean_sd(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} +- {statistics.stdev(values):.2g}"


def targets(ms: dict[str, list]) -> list[float]:
    return [m.results["final_test_accuracy"] - 0.005 for m in ms["fixed 128"]]


def outcome_table(study: dict, runs: dict) -> list[str]:
    lines = [f"1. {study['model']}, {study['epochs']} epochs of {study['examples']} Fashion-MNIST "
             f"images, test on {study['test_examples']}; 2 workers; seeds {study['seeds']}",
             f"{'link':>8} {'arm':<20} {'batches per epoch (per seed)':<60} {'train s':>14} "
             f"{'final acc':>16} {'to target s':>14} {'reached':>7}"]
    for rate, ms in runs.items():
        goal = targets(ms) if "fixed 128" in ms else []
        for _, label in ARMS:
            if label not in ms:
                continue
            seeds = ms[label]
            reach = [time_to_accuracy(m, t) for m, t in zip(seeds, goal)]
            batches = " | ".join(",".join(map(str, m.batches)) for m in seeds)
            lines.append(
                f"{rate:>8} {label:<20} {batches:<60} {_mean_sd([m.time_s for m in seeds]):>14} "
                f"{_mean_sd([m.results['final_test_accuracy'] for m in seeds]):>16} "
                f"{_mean_sd(reach):>14} {sum(r is not None for r in reach)}/{len(reach):<5}")
    lines.append("   target per seed: that seed's fixed 128 final test accuracy - 0.5 points; "
                 "time = training steps only (bench/cluster.py)")
    return lines


def goal_verdict(iv, *, limit: float, below: bool) -> str:
    """'met' if the whole interval is on the goal's side of `limit`, 'not met' if the whole is
    on the other side, else 'inconclusive'."""
    if below:
        return "met" if iv.high <= limit else "not met" if iv.low > limit else "inconclusive"
    return "met" if iv.low >= limit else "not met" if iv.high < limit else "inconclusive"


def goals(runs: dict) -> list[str]:
    from keras_largebatch.studies.intervals import paired_t_interval

    lines = ["", "2. issue 29's goals, paired over seeds (95% t-interval of the difference)"]
    for rate, ms in runs.items():
        if not all(k in ms for k in ("fixed 128", "adabatch 128->1024", "goodput 128..1024")):
            continue
        goal = targets(ms)
        g = [time_to_accuracy(m, t) for m, t in zip(ms["goodput 128..1024"], goal)]
        a = [time_to_accuracy(m, t) for m, t in zip(ms["adabatch 128->1024"], goal)]
        pairs = [(x, y) for x, y in zip(g, a) if x is not None and y is not None]
        lines.append(f"   {rate}: target reached by goodput on {sum(x is not None for x in g)} "
                     f"of {len(g)} seeds, by adabatch on {sum(y is not None for y in a)} of "
                     f"{len(a)}")
        diffs = [None if x is None or y is None else round(x - y, 1) for x, y in zip(g, a)]
        lines.append(f"   {rate}: time to target, goodput - adabatch: per seed {diffs}")
        if len(pairs) >= 2:
            iv = paired_t_interval([x for x, _ in pairs], [y for _, y in pairs])
            lines.append(f"      {iv} s over the seeds where both reach it -> goal 'at least "
                         f"as fast as AdaBatch': {goal_verdict(iv, limit=0.0, below=True)}")
        else:
            lines.append("      fewer than 2 seeds where both reach the target: no interval")
        for what, key in (("training time (s)", None), ("final accuracy (points)", "acc")):
            gv = [m.time_s if key is None else 100 * m.results["final_test_accuracy"]
                  for m in ms["goodput 128..1024"]]
            av = [m.time_s if key is None else 100 * m.results["final_test_accuracy"]
                  for m in ms["adabatch 128->1024"]]
            n = min(len(gv), len(av))
            if n >= 2:
                lines.append(f"   {rate}: {what}, goodput - adabatch: "
                             f"{paired_t_interval(gv[:n], av[:n])}")
        acc_g = [m.results["final_test_accuracy"] for m in ms["goodput 128..1024"]]
        acc_f = [m.results["final_test_accuracy"] for m in ms["fixed 128"]]
        n = min(len(acc_g), len(acc_f))
        lines.append(f"   {rate}: final accuracy, goodput - fixed 128 (points): per seed "
                     f"{[round(100 * (x - y), 2) for x, y in zip(acc_g, acc_f)]}")
        if n >= 2:
            iv = paired_t_interval([100 * x for x in acc_g[:n]], [100 * y for y in acc_f[:n]])
            lines.append(f"      {iv} points -> goal 'within 0.5 points of fixed 128': "
                         f"{goal_verdict(iv, limit=-0.5, below=False)}")
    return lines


def observations(runs: dict, params: int):
    """{(workers, batch, rate): [step_time_s, ...]} over every epoch of every seed."""
    points: dict[tuple, list[float]] = {}
    for rate, ms in runs.items():
        for seeds in ms.values():
            for m in seeds:
                for e in m.results["epochs"]:
                    if e.get("step_time_s"):
                        points.setdefault((2, e["batch_size"], rate), []).append(e["step_time_s"])
    return points


def validation_points(validation: dict) -> dict[tuple, list[float]]:
    points: dict[tuple, list[float]] = {}
    for name, results in validation.items():
        rate, run = name.split("/")
        workers = int(run.rsplit("_", 1)[1].rstrip("w"))
        for e in results["epochs"]:
            if e.get("step_time_s"):
                key = (workers, e["batch_size"], None if rate == "local" else rate)
                points.setdefault(key, []).append(e["step_time_s"])
    return points


def throughput_check(runs: dict, validation: dict, params: int) -> list[str]:
    from keras_largebatch.goodput.throughput import Observation, fit

    def bits(rate):
        return netns.parse_rate(rate) if rate else None

    points = observations(runs, params)
    extra = validation_points(validation)
    single = [k for k in extra if k[0] == 1]
    fitted = {k: v for k, v in points.items() if k[1] in FIT_BATCHES}
    if single:
        first = min(single, key=lambda k: k[1])
        fitted[first] = extra.pop(first)
    train = [Observation(w, b, bits(r), params, t) for (w, b, r), ts in fitted.items()
             for t in ts]
    if not train:
        return []
    model = fit(train)
    held = {k: ("another batch", v) for k, v in points.items() if k[1] not in FIT_BATCHES}
    held.update({k: ("another rate" if k[0] > 1 else "one worker", v) for k, v in extra.items()})
    lines = ["", f"3. throughput model fitted to {len(train)} epochs: 2 workers at global batches "
                 f"{FIT_BATCHES} at {', '.join(sorted(runs))}"
                 + (f", 1 worker at {first[1]}" if single else "") + f": {model.describe()}",
             f"   {'held out':<14} {'workers':>7} {'batch':>6} {'link':>8} {'measured ms':>12} "
             f"{'predicted ms':>13} {'error':>7}"]
    worst = 0.0
    for (w, b, r), (why, ts) in sorted(held.items(), key=lambda kv: (kv[1][0], kv[0][1])):
        measured = statistics.mean(ts)
        predicted = model.step_time(w, b, bits(r), params)
        err = predicted / measured - 1
        worst = max(worst, abs(err))
        lines.append(f"   {why:<14} {w:>7} {b:>6} {r or 'none':>8} {1e3 * measured:>12.1f} "
                     f"{1e3 * predicted:>13.1f} {100 * err:>+6.1f}%")
    if held:
        lines.append(f"   largest error {100 * worst:.1f}% (bar: {100 * GOAL_ERROR:.0f}%): "
                     f"{'within' if worst <= GOAL_ERROR else 'NOT within'}")
    return lines


def report(out: Path) -> str:
    out = Path(out)
    study, runs, validation, params = load(out)
    if not runs:
        return f"no seed of the study in {out} has finished yet"
    lines = outcome_table(study, runs) + goals(runs) + throughput_check(runs, validation, params)
    return "\n".join(lines)
