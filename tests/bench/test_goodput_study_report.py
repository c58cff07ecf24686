"""bench/goodput_study_report.py on a study folder written by hand: time to target with epoch 1
replaced as bench/cluster.py does, the paired t-interval of the goals (checked against the t
quantile by hand), and the throughput check recovering the model the step times were made
from (held-out points predicted exactly)."""

import json
import sys

import pytest

from ..cli import REPO

sys.path.insert(0, str(REPO / "bench"))
import goodput_study_report as gsr  # noqa: E402

P = 1000                                    # parameters: 32,000 bits per all-reduce at W = 2
A, C, ALPHA, BETA = 0.010, 0.001, 0.020, 1.5  # the model the step times are made from


def step(workers, batch, rate_bits):
    comm = (ALPHA + BETA * 32_000 / rate_bits) if workers > 1 else 0.0
    return A + C * batch / workers + comm


def results(batches, times, accs, rate_bits, workers=2):
    return {"final_test_accuracy": accs[-1], "epochs": [
        {"batch_size": b, "epoch_time_s": t, "test_accuracy": a,
         "step_time_s": step(workers, b, rate_bits)}
        for b, t, a in zip(batches, times, accs)]}


# Per seed, arm: (batches, epoch times, test accuracies). Seed 0's target: 0.85 - 0.005.
SEEDS = {
    0: {"fixed_128": ([128, 128], [10, 8], [0.80, 0.85]),
        "fixed_1024": ([1024, 1024], [5, 4], [0.50, 0.60]),
        "adabatch_128_1024": ([128, 256], [9, 6], [0.82, 0.85]),
        "goodput_128..1024": ([128, 512], [9, 5], [0.83, 0.846])},
    1: {"fixed_128": ([128, 128], [10, 8], [0.80, 0.86]),
        "fixed_1024": ([1024, 1024], [5, 4], [0.50, 0.60]),
        "adabatch_128_1024": ([128, 256], [9, 6], [0.82, 0.86]),
        "goodput_128..1024": ([128, 512], [9, 4], [0.83, 0.86])},
}
RATES = {"100mbit": 1e8, "10mbit": 1e7}


@pytest.fixture()
def study(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps(
        {"seeds": [0, 1], "rates": list(RATES), "examples": 4096, "test_examples": 5000,
         "epochs": 2, "model": "resnet20"}))
    for seed, arms in SEEDS.items():
        folder = tmp_path / f"seed{seed}"
        for rate, bits in RATES.items():
            (folder / rate).mkdir(parents=True)
            for arm, (b, t, a) in arms.items():
                (folder / rate / f"{arm}_2w.json").write_text(json.dumps(results(b, t, a, bits)))
        (folder / "cluster.log").write_text(f"model resnet20: {P:,} parameters\n")
    v = tmp_path / "validation"
    for rate, name, workers, batch in (("local", "fixed_256_1w", 1, 256),
                                       ("local", "fixed_512_1w", 1, 512),
                                       ("30mbit", "fixed_512_2w", 2, 512)):
        (v / rate).mkdir(parents=True, exist_ok=True)
        bits = 3e7 if workers > 1 else None
        (v / rate / f"{name}.json").write_text(json.dumps(
            results([batch, batch], [1, 1], [0.5, 0.5], bits, workers)))
    (v / "cluster.log").write_text(f"model resnet20: {P:,} parameters\n")
    return tmp_path


def test_time_to_target_and_goals(study):
    text = gsr.report(study)
    # Epoch 1 of every run is replaced by the median later epoch at batch 128 (fixed 128's
    # epoch 2: 8 s): AdaBatch reaches the target at 8 + 6 = 14 s on both seeds, GoodputBatch
    # at 8 + 5 = 13 s and 8 + 4 = 12 s.
    assert "time to target, goodput - adabatch: per seed [-1.0, -2.0]" in text
    # d = (-1, -2): mean -1.5, s = 0.7071, t_{0.975, 1} = 12.706 -> half-width 6.353.
    assert "-1.5 [-7.85, +4.85]" in text
    assert "'at least as fast as AdaBatch': inconclusive" in text
    assert "100mbit: target reached by goodput on 2 of 2 seeds, by adabatch on 2 of 2" in text
    # Training time: goodput 8 + 5 = 13 and 8 + 4 = 12 against adabatch 14 and 14.
    assert "training time (s), goodput - adabatch: -1.5 [-7.85, +4.85]" in text
    # Final accuracy (points): 84.6 - 85.0 and 86.0 - 86.0, the same as against fixed 128.
    assert "final accuracy (points), goodput - adabatch: -0.2 [-2.74, +2.34]" in text
    # Accuracy: (84.6 - 85.0, 86.0 - 86.0) = (-0.4, 0.0): mean -0.2, half 12.706 x 0.2828 / 1.414.
    assert "per seed [-0.4, 0.0]" in text
    assert "-0.2 [-2.74, +2.34]" in text
    # Fixed 1024 never reaches the target on either seed.
    row = next(x for x in text.splitlines() if "100mbit fixed 1024" in x)
    assert row.split()[-2:] == ["-", "0/2"]


def test_throughput_model_predicts_held_out_points_exactly(study):
    text = gsr.report(study)
    held = [x for x in text.splitlines() if x.strip().startswith(("another", "one worker"))]
    # 256 and 512 at both rates (another batch), 512 at 30mbit (another rate), 512 on 1 worker.
    assert len(held) == 6, text
    for row in held:
        assert row.split()[-1] in ("+0.0%", "-0.0%"), row
    assert "largest error 0.0%" in text
    assert "a = 10.00 ms/step, c = 1000.0 us/sample, alpha = 20.00 ms" in text
    assert "beta = 1.50" in text


def test_a_seed_not_run_yet_is_left_out(study):
    for path in (study / "seed1").rglob("*"):
        if path.is_file():
            path.unlink()
    text = gsr.report(study)
    assert "fewer than 2 seeds" in text


# ---- bench/goodput_study.py's refusals, through its command line ------------------------------

def _study_cli(*args):
    import subprocess

    return subprocess.run([sys.executable, str(REPO / "bench" / "goodput_study.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def _one_error_line(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0]


def test_report_of_a_missing_study_is_one_line(tmp_path):
    proc = _study_cli("--report_only", f"--out={tmp_path / 'none'}")
    _one_error_line(proc, "no study in", "without --report_only")
    assert not (tmp_path / "none").exists()


def test_bad_rate_is_refused_before_anything_is_written(tmp_path):
    proc = _study_cli("--rates=100mbit,fast", f"--out={tmp_path / 'out'}")
    _one_error_line(proc, "--rates", "'fast'")
    assert not (tmp_path / "out").exists()


def test_a_folder_with_another_study_is_refused_unchanged(study):
    before = (study / "study.json").read_bytes()
    proc = _study_cli("--seeds=0,1,2", f"--out={study}")
    _one_error_line(proc, "holds a study with other settings", "another --out")
    assert (study / "study.json").read_bytes() == before
    assert sorted(p.name for p in study.iterdir()) == ["seed0", "seed1", "study.json",
                                                      "validation"]


def test_rerun_arm_refuses_an_unknown_arm_or_a_missing_study(tmp_path, study):
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    proc = _study_cli("--rerun_arm=goodput", f"--out={study}")
    _one_error_line(proc, "--rerun_arm", "'goodput'", "goodput 128..1024")
    proc = _study_cli("--rerun_arm=goodput 128..1024", f"--out={tmp_path / 'none'}")
    _one_error_line(proc, "no study in", "--rerun_arm")
    assert not (tmp_path / "none").exists()
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before


def test_cluster_runs_only_the_arms_asked_for():
    import cluster

    exp = cluster.only_arms(cluster.experiment("adabatch", 4), ["goodput 128..1024",
                                                                 "fixed 128"])
    assert [r.label for r in exp.runs] == ["fixed 128", "goodput 128..1024"]  # its order
    assert exp.baseline == "fixed 128" and exp.headline == "fixed 128"  # adabatch not run
