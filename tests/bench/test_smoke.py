"""Every bench under bench/ runs at its smallest size (`--smoke`), so an internal change cannot
break one silently; and bench/timing.py, the harness they share, does what it says.

The benches run in this process (`main(argv)` of the imported script), with the argument lists
bench/all.py gives them for `--quick` followed by `--smoke`, so all.py's lists are checked too.
Processes only where the bench itself needs them: startup.py and allocator.py time real CLI
processes, noise_scale_overhead.py sets up logical CPU devices at import (only a fresh process
can), and all.py runs each bench in its own process (here: noise_scale, which needs one anyway).
cluster.py is tested in tests/bench/test_cluster.py (it needs root).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..cli import REPO

BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))  # the benches import their harness as `timing`


def _load(script: str):
    """bench/<script> as a module of its own name (bench_<stem>): no clash with the package."""
    name = f"bench_{script[:-3]}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


bench_all = _load("all.py")
timing = _load("timing.py")


def _flags_by_grep() -> list[str]:
    """The house command: grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u (plus avx2)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return sorted(set(re.findall(r"avx512[a-z_0-9]*", text)) | (
        {"avx2"} if re.search(r"\bavx2\b", text) else set()))


# ---- bench/timing.py ----------------------------------------------------------------------

def test_alternate_rotates_the_order_every_round():
    calls = []
    got = timing.alternate({k: (lambda r, k=k: calls.append((r, k)) or f"{k}{r}")
                            for k in "abc"}, rounds=4)
    assert calls == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
                     (2, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c")]
    assert got == {"a": ["a0", "a1", "a2", "a3"], "b": ["b0", "b1", "b2", "b3"],
                   "c": ["c0", "c1", "c2", "c3"]}
    two = []
    timing.alternate({"A": lambda r: two.append("A"), "B": lambda r: two.append("B")}, 3)
    assert "".join(two) == "ABBAAB"


def test_ratios_spread_and_median():
    assert timing.ratios([2.0, 3.0, 9.0], [1.0, 2.0, 3.0]) == [2.0, 1.5, 3.0]
    with pytest.raises(ValueError):
        timing.ratios([1.0], [1.0, 2.0])  # one value per round on both sides
    assert timing.median([5.0, 1.0, 3.0, 2.0]) == 2.5
    assert timing.spread("x/y", [2.0, 1.5, 3.0]) == (
        "x/y: median 2.000 (min 1.500, max 3.000, 3 rounds)")


def test_cpu_flags_and_load_average(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu sse avx avx2 avx512f "
                       "avx512_vnni avx512vl avx2x\n\nflags\t\t: avx512f avx512bw\n")
    assert timing.cpu_flags(str(cpuinfo)) == ["avx2", "avx512_vnni", "avx512bw", "avx512f",
                                              "avx512vl"]
    assert timing.cpu_model(str(cpuinfo)) == "Test CPU"
    assert timing.cpu_flags(str(tmp_path / "missing")) == []
    assert timing.cpu_flags() == _flags_by_grep()
    assert re.fullmatch(r"\d+\.\d\d \d+\.\d\d \d+\.\d\d", timing.load_average())
    line = timing.machine_line()
    assert f"{os.cpu_count()} CPU cores" in line and "load average" in line
    assert " ".join(_flags_by_grep()) in line


def test_seconds_session_and_smoke(capsys):
    assert timing.seconds(lambda: sum(range(1000))) >= 0
    with pytest.raises(RuntimeError), timing.session("what"):
        raise RuntimeError("a failing bench still prints its closing load line")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "what" and out[1].startswith("machine: ")
    assert out[2].startswith("load average at end: ")
    parser = timing.bench_parser("Title line.\n\nMore.")
    parser.add_argument("--rounds", type=int, default=5)
    assert timing.smoke(parser.parse_args([]), rounds=1).rounds == 5
    assert timing.smoke(parser.parse_args(["--rounds", "9", "--smoke"]), rounds=1).rounds == 1
    with pytest.raises(AttributeError, match="steps"):
        timing.smoke(parser.parse_args(["--smoke"]), steps=1)


def test_a_bad_flag_is_one_error_line(capsys):
    parser = timing.bench_parser(None)
    parser.add_argument("--rounds", type=int, default=5)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--rounds", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'many'" in err[0], err


# ---- all.py reaches every bench -----------------------------------------------------------

def _tracked_scripts() -> set[str]:
    """bench/*.py in git (a bench still being written is not yet one), or on disk outside git."""
    out = subprocess.run(["git", "ls-files", "bench"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        return {p.name for p in BENCH.glob("*.py")}
    return {Path(f).name for f in out.stdout.split() if f.endswith(".py") and f.count("/") == 1}


def test_all_reaches_every_bench_or_says_why_not():
    scripts = _tracked_scripts()
    run = {script for script, *_ in bench_all.BENCHES.values()}
    unreached = scripts - run - set(bench_all.LEFT_OUT) - set(bench_all.NOT_BENCHES)
    assert not unreached, f"add these to bench/all.py's BENCHES or LEFT_OUT: {unreached}"
    assert run <= scripts and set(bench_all.LEFT_OUT) <= scripts
    for script in bench_all.LEFT_OUT:
        assert script in bench_all.__doc__  # the docstring says why


# ---- each bench at its smallest size, in this process ---------------------------------------

IN_PROCESS = ["lars", "ghost_bn", "ba", "batch_aug", "phase_switch", "checkpoint", "vs_keras",
              "loop", "fit_slowdown", "backends", "host_overhead", "ba_parts"]
# A line each bench must print (its result), so a bench that silently skips its work fails.
RESULT = {
    "lars": r"LARS/SGD step time \d+\.\d{3}",
    "ghost_bn": r"ratio ghost_bn/keras_bn: \d+\.\d{3}",
    "ba": r"projection: +\d+ samples/s",
    "batch_aug": r"time waiting in next\(iterator\): \d+\.\d\d%",
    "phase_switch": r"retraces: \d+; switch cost",
    "checkpoint": r"cnn_fashion +\d+ +\d+\.\d\d",
    "vs_keras": r"framework  / fit_numpy  per epoch \d",
    "loop": r"ratio loop/fit = \d+\.\d{3}",
    "fit_slowdown": r"tfdata +img/s per epoch: \d+ \d+ +traces",
    "backends": r"SGD momentum vs BA-Momentum diagonal .*time ratio: median \d",
    "allocator": r"wall time glibc / tcmalloc: \d+\.\d\dx",
    "startup": r"ratio with / without jax: wall \d+\.\d{3}",
    "host_overhead": r"(?s)per round: median x\d+\.\d{3}.*"
                     r"framework host overhead at K=4: -?\d+ us per update",
    "ba_parts": r"diagonal: ba_full +wall +\d+\.\d\d ms +CPU +\d+\.\d\d ms +CPU / plain \d",
    "noise_scale": r"2 replica\(s\): without \d+\.\d\d ms, with \d+\.\d\d ms per update; "
                   r"with / without \d+\.\d{3}",
}


def _smoke_argv(name: str) -> list[str]:
    return [*bench_all.command(name, "quick")[2:], "--smoke"]


# The bench runs are marked slow: together ~2.5 min here under load (3-25 s each; BUILD_NOTES,
# "bench/"); the harness tests above take well under a second.
@pytest.mark.slow
@pytest.mark.parametrize("name", IN_PROCESS)
def test_bench_runs_at_its_smallest_size(name, capsys):
    module = _load(bench_all.BENCHES[name][0])
    status = module.main(_smoke_argv(name))
    out = capsys.readouterr().out
    assert status in (None, 0), out[-2000:]
    assert "machine: " in out and "load average at end: " in out, out[-2000:]
    assert re.search(RESULT[name], out), out[-2000:]


@pytest.mark.slow
def test_startup_bench_runs_at_its_smallest_size(capsys):
    if not (REPO / ".jax-packages" / "jax").is_dir():
        pytest.skip(".jax-packages not installed (make test installs it)")
    _load("startup.py").main(_smoke_argv("startup"))
    out = capsys.readouterr().out
    assert re.search(RESULT["startup"], out), out
    assert len(re.findall(r"^round 0: with", out, re.M)) == 2  # one process per side


@pytest.mark.slow
def test_allocator_bench_runs_at_its_smallest_size(capsys):
    module = _load("allocator.py")
    if not module.tcmalloc_available():
        pytest.skip("libtcmalloc-minimal4 not installed (make install installs it)")
    assert module.main(_smoke_argv("allocator")) == 0  # 0: the same weights on both
    out = capsys.readouterr().out
    assert re.search(RESULT["allocator"], out), out
    assert "same final weights on both allocators: True" in out


@pytest.mark.slow
def test_all_runs_each_bench_in_its_own_process(tmp_path, capsys):
    log = tmp_path / "bench.log"
    assert bench_all.main(["--smoke", "--only", "noise_scale", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    head = re.search(r"^== noise_scale: .*noise_scale_overhead\.py --smoke \(exit 0, \d+ s, "
                     r"load average \d+\.\d\d -> \d+\.\d\d\)$", out, re.M)
    assert head, out
    summary = out.split("==== summary ====")[1]
    assert summary.splitlines()[1].startswith("machine: ")
    assert re.search(RESULT["noise_scale"], summary), summary  # its result, in the summary
    assert log.read_text().startswith("== noise_scale: ")


@pytest.mark.parametrize("argv, message", [
    (["--only", "nosuch"], "error: unknown benchmark 'nosuch' in --only; choose from lars, "),
    (["--quick", "--smoke"], "error: --quick and --smoke together; give one"),
])
def test_all_refuses_bad_flags_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_all.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(message), err
