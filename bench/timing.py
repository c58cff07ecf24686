"""The benches' one timing harness: rounds, alternation, median/min/max, the machine line.

    from timing import alternate, bench_parser, ratios, session, spread

    parser = bench_parser(__doc__)             # adds --smoke; a bad flag is one `error:` line
    args = parser.parse_args(argv)
    smoke(args, rounds=1, steps=2)             # --smoke: the bench's smallest size
    with session("LARS vs SGD, batch 128"):   # prints the machine line, then the load at end
        times = alternate({"sgd": run_sgd, "lars": run_lars}, rounds=args.rounds)
        print(spread("LARS/SGD step time", ratios(times["lars"], times["sgd"])))

Alternation: round r runs the variants in their order rotated by r (2 variants: A B, B A,
A B, ...; 3: A B C, B C A, C A B, ...), so every variant runs first, middle and last equally
often and all of them see the same machine load. Each variant is called with the round index
and returns its measurement (seconds from `seconds(fn)`, or a rate); `alternate` keeps them
per variant in round order, so `ratios(times[b], times[a])[r]` pairs the two of one round.

The machine line: CPU model, cores, the AVX flags of /proc/cpuinfo (the output of
`grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u`, plus avx2) and the 1/5/15-minute load
average (`uptime`): absolute throughputs on a shared machine are distorted, the ratios measured
side by side are the output, and these say under what they were measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")
_FLAG = re.compile(r"\b(avx512[a-z_0-9]*|avx2)\b")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """avx2 and every avx512* flag the CPU reports, sorted (empty where there is no cpuinfo)."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(_FLAG.findall(line))
    return sorted(flags)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """'0.64 0.29 0.11': the 1, 5 and 15-minute load average, as `uptime` prints it."""
    if not hasattr(os, "getloadavg"):
        return "?"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_line() -> str:
    flags = " ".join(cpu_flags()) or "no avx2/avx512"
    return (f"machine: {cpu_model()}, {os.cpu_count()} CPU cores, flags: {flags}; "
            f"load average {load_average()}")


@contextlib.contextmanager
def session(what: str) -> Iterator[None]:
    """Print `what` and the machine line before, the load average after (also on failure)."""
    print(what, flush=True)
    print(machine_line(), flush=True)
    try:
        yield
    finally:
        print(f"load average at end: {load_average()}", flush=True)


def seconds(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of fn (make fn wait for its own result)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(variants: Mapping[str, Callable[[int], T]], rounds: int) -> dict[str, list[T]]:
    """Call every variant once per round, the order rotated by the round (module docstring)."""
    names = list(variants)
    out: dict[str, list[T]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(variants[name](r))
    return out


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios (the two lists are one value per round, in round order)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(label: str, values: Sequence[float], fmt: str = ".3f") -> str:
    """'label: median 1.234 (min 1.100, max 1.300, 5 rounds)'."""
    return (f"{label}: median {median(values):{fmt}} (min {min(values):{fmt}}, "
            f"max {max(values):{fmt}}, {len(values)} round{'s' if len(values) != 1 else ''})")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A bad flag: one `error:` line (argparse's message names the flag), exit 2."""
        print(f"error: {message}; see --help", file=sys.stderr)
        sys.exit(2)


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with --smoke, whose bad-flag message is one `error:` line."""
    parser = _Parser(description=(doc or "").split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size (1 round, tiny data/model): checks that the bench "
                             "runs, measures nothing worth reading")
    return parser


def smoke(args: argparse.Namespace, **sizes) -> argparse.Namespace:
    """Under --smoke, set each size flag to its smallest value (overriding what was given)."""
    if args.smoke:
        for name, value in sizes.items():
            if not hasattr(args, name):
                raise AttributeError(f"--smoke sets {name}, which the bench does not have")
            setattr(args, name, value)
    return args
