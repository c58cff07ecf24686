"""bench/cluster.py's measured runs, their timings and the printed report (sections 1-3 and the
last line; what each column means is in bench/cluster.py's docstring).

    runs = [Measured(label, workers, rate, results_json), ...]
    fill_times(runs)          # time_s: epoch_time_s summed, epoch 1 replaced (cluster.py)
    print(report(args, params, scaling, single, exp, exp_runs))
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import netns


def _cost_model():
    """bench/cost_model.py, imported when a report is made: it imports Keras (seconds), which
    --cleanup and a refused flag should not wait for."""
    import cost_model

    return cost_model


@dataclass
class Measured:
    label: str
    workers: int
    rate: str | None
    results: dict
    time_s: float = 0.0
    epoch_times: list[float] = field(default_factory=list)   # epoch 1 replaced (fill_times)
    estimated_first: bool = False
    batches: list[int] = field(default_factory=list)


# ---- timings -------------------------------------------------------------------------------------

def steady_epochs(m: Measured) -> list[dict]:
    """Epochs 2.. (epoch 1 holds tracing and start-up); epoch 1 if it is the only one."""
    epochs = m.results["epochs"]
    return epochs[1:] if len(epochs) > 1 else epochs


def samples_per_second(m: Measured) -> float:
    return statistics.median(e["samples_per_second"] for e in steady_epochs(m))


def fill_times(runs: list[Measured]) -> None:
    """time_s of each run: epoch_time_s summed, epoch 1 replaced (see the module docstring)."""
    later: dict[int, list[float]] = {}
    for m in runs:
        for e in m.results["epochs"][1:]:
            later.setdefault(e["batch_size"], []).append(e["epoch_time_s"])
    for m in runs:
        epochs = m.results["epochs"]
        first = epochs[0]
        m.estimated_first = first["batch_size"] not in later
        t1 = (first["epoch_time_s"] if m.estimated_first
              else statistics.median(later[first["batch_size"]]))
        m.epoch_times = [t1, *(e["epoch_time_s"] for e in epochs[1:])]
        m.time_s = sum(m.epoch_times)


def time_to_accuracy(m: Measured, target: float) -> float | None:
    """Training time until the first epoch whose test accuracy reaches `target` (None: never)."""
    total = 0.0
    for e, t in zip(m.results["epochs"], m.epoch_times):
        total += t
        if e["test_accuracy"] >= target:
            return total
    return None


def observations(runs: list[Measured], params: int) -> list:
    cost_model = _cost_model()
    out = []
    for m in runs:
        rate = netns.parse_rate(m.rate) if m.rate else None
        for e in steady_epochs(m):
            out.append(cost_model.Observation(m.workers, e["batch_size"], rate, params,
                                              e["batch_size"] / e["samples_per_second"]))
    return out


# ---- report --------------------------------------------------------------------------------------

def report(args, params: int, scaling: dict, single: Measured | None, exp,
           exp_runs: dict[str, list[Measured]]) -> str:
    lines = []
    all_runs = ([single] if single else []) + list(scaling.get("extra", [])) + \
        list(scaling.get("multi", {}).values()) + [m for ms in exp_runs.values() for m in ms]
    model = _cost_model().fit(observations(all_runs, params))
    w = args.workers

    if single is not None:
        b = args.scaling_batch
        lines += ["", f"1. scaling: {args.model}, global batch {b}, {args.examples} examples per "
                  "epoch; samples/s = median of epochs 2.. (results.json samples_per_second)",
                  f"{'link':>10} {'1 worker':>10} {f'{w} workers':>10} {'speed-up':>9} "
                  f"{'model: samples/s':>17} {'speed-up':>9}"]
        s1 = samples_per_second(single)
        for rate, m in scaling["multi"].items():
            sw = samples_per_second(m)
            bps = netns.parse_rate(rate)
            p1 = b / model.step_time(1, b, None, params)
            pw = b / model.step_time(w, b, bps, params)
            lines.append(f"{rate:>10} {s1:10.1f} {sw:10.1f} {sw / s1:8.2f}x "
                         f"{pw:17.1f} {pw / p1:8.2f}x")

    if exp is not None:
        lines += ["", f"2. {exp.name}: {args.model}, {args.epochs} epochs of {args.examples} "
                  f"examples, {w} workers; time = sum of epoch_time_s, epoch 1 replaced by the "
                  "median later epoch at its batch (* = not available, raw epoch 1)",
                  f"{'link':>10} {'run':<20} {'batch per epoch':<22} {'time s':>8} "
                  f"{'wall s':>7} {'test acc':>8} {'speed-up':>9} {'to target s':>11} "
                  f"{'model: time s':>14} {'speed-up':>9}"]
        for rate, runs in exp_runs.items():
            bps = netns.parse_rate(rate)
            base = next(m for m in runs if m.label == exp.baseline)
            target = base.results["final_test_accuracy"] - 0.005
            pbase = model.run_time(w, base.batches, args.examples, bps, params)
            for m in runs:
                pt = model.run_time(w, m.batches, args.examples, bps, params)
                star = "*" if m.estimated_first else " "
                reach = time_to_accuracy(m, target)
                lines.append(
                    f"{rate:>10} {m.label:<20} {','.join(map(str, m.batches)):<22} "
                    f"{m.time_s:7.1f}{star} {m.results['wall_time_s']:7.1f} "
                    f"{m.results['final_test_accuracy']:8.4f} {base.time_s / m.time_s:8.2f}x "
                    f"{'-' if reach is None else f'{reach:.1f}':>11} "
                    f"{pt:14.1f} {pbase / pt:8.2f}x")
            lines.append(f"{'':>10} target: {exp.baseline}'s final test accuracy - 0.5 points "
                         f"= {target:.4f}")

    pw_, prate = args.predict_workers or w, args.predict_rate
    pparams = args.predict_params or params
    pbps = netns.parse_rate(prate) if prate else None
    lines += ["", f"3. cost model, fitted to {len(observations(all_runs, params))} steady "
              f"epochs above (in-sample: its predictions above are not independent checks): "
              f"{model.describe()}",
              f"   prediction for {pw_} workers at {prate or 'an unshaped link'}, {pparams:,} "
              f"parameters ({4 * pparams / 1e6:.2f} MB float32; measured model: {params:,})"]
    if model.rank < 4:
        lines.append("   (not all parameters pinned: run both parts, at >= 2 rates, for a "
                     "prediction that means something)")
    b = args.scaling_batch
    sp = model.step_time(1, b, None, pparams) / model.step_time(pw_, b, pbps, pparams)
    lines.append(f"   scaling at global batch {b}: {pw_} workers vs 1: {sp:.2f}x")
    if exp is not None:
        batches = {m.label: m.batches for m in exp_runs[next(iter(exp_runs))]}
        tb = model.run_time(pw_, batches[exp.baseline], args.examples, pbps, pparams)
        for label, bs in batches.items():
            if label != exp.baseline:
                t = model.run_time(pw_, bs, args.examples, pbps, pparams)
                lines.append(f"   {label} over {exp.baseline}: {tb / t:.2f}x")
        lines.append("")
        for rate in sorted(exp_runs, key=lambda r: -(netns.parse_rate(r) or float("inf"))):
            runs = {m.label: m for m in exp_runs[rate]}
            h, bl = runs[exp.headline], runs[exp.baseline]
            lines.append(f"{exp.headline.split()[0]} speed-up over {exp.baseline}: "
                         f"{bl.time_s / h.time_s:.2f}x at {rate} (accuracy "
                         f"{h.results['final_test_accuracy']:.4f} vs "
                         f"{bl.results['final_test_accuracy']:.4f})")
    return "\n".join(lines)
