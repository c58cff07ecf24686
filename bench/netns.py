"""An emulated cluster on one Linux machine: one network namespace per worker, veth links capped
with `tc ... tbf`, one CPU core per worker. Used by bench/cluster.py (see its docstring for the
command); needs root, `ip` and `tc` (iproute2).

    with EmulatedCluster(workers=2, rate="100mbit") as cluster:
        cluster.set_rate("1gbit")
        codes = cluster.run([argv0, argv1], envs=[env0, env1], cwd=repo, logs=[p0, p1],
                            timeout=600)

Layout (every name carries the bench's PID, so two benches never share one):

- 2 workers: namespaces `klb-<pid>-w0`, `klb-<pid>-w1`, joined by one veth pair created
  directly inside them (`veth0` in each); addresses 10.253.0.1/24 and 10.253.0.2/24.
- more workers: a namespace `klb-<pid>-br` holding a bridge `br0`; worker i's namespace holds
  `veth0` (10.253.0.<i+1>/24), whose peer `w<i>` sits on the bridge.
- `lo` is up in every namespace. Nothing is created in the root namespace, so no traffic of the
  bench leaves the namespaces it created.
- every veth end gets `tc qdisc replace dev <veth> root tbf rate R burst B latency 100ms`
  (tbf shapes what leaves an interface: capping both ends caps both directions at R); rate
  None removes the qdisc (unshaped veth).

Commands run as `ip netns exec <ns> taskset -c <core> ARGV`; `ip netns exec` and `taskset` exec
the command, so the PID that Popen returns is the worker's own. Workers run in their own
session (a terminal's Ctrl-C reaches only the bench, which kills them by PID).

Clean-up (`close`, idempotent; also registered with atexit): kill every started process that
is still alive (SIGKILL by PID, waited for), then `ip netns del` each namespace this object
created (deleting a namespace destroys the veths in it), in reverse order, with SIGINT/SIGTERM
blocked so that a second Ctrl-C cannot interrupt it. Namespaces this object did not create are
never touched.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUBNET = "10.253.0"          # addresses exist only inside the namespaces created here
TBF_LATENCY = "100ms"        # longest a packet may wait in the tbf queue (sets its limit)
COMMAND_TIMEOUT = 30         # seconds for one `ip` / `tc` command
KILL_WAIT = 10               # seconds to wait for a killed process
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
UNSHAPED = ("none", "unshaped")


class ClusterError(RuntimeError):
    """A namespace command or a worker failed; the message is one line."""


class WorkerFailed(ClusterError):
    """A worker exited with a non-zero status or ran past its time limit."""


def parse_rate(text: str) -> float | None:
    """'100mbit' -> 1e8 bits/s (tc's units: bit, kbit, mbit, gbit); 'none'/'unshaped' -> None."""
    text = text.strip().lower()
    if text in UNSHAPED:
        return None
    m = _RATE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"bad link rate {text!r}: give e.g. 100mbit, 1gbit, 10gbit or none")
    return float(m.group(1)) * _UNITS[m.group(2)]


def requirements_error(euid: int | None = None, which=shutil.which) -> str | None:
    """Why the emulated cluster cannot run here (one line), or None."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return "the emulated cluster needs root (network namespaces and tc); run it as root"
    missing = [tool for tool in ("ip", "tc", "taskset") if which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not found on PATH; install iproute2 (ip, tc) and "
                f"util-linux (taskset)")
    return None


def tbf_burst(rate_bps: float) -> int:
    """Bucket size in bytes: 1 ms at the rate, at least 16 KiB (a few full-size packets)."""
    return max(int(rate_bps / 8 / 1000), 16384)


def list_namespaces() -> set[str]:
    """Names of the network namespaces that exist now (`ip netns list`)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _command(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["(no message)"])[0]
        raise ClusterError(f"`{' '.join(argv)}` failed: {detail}")


def _block_signals():
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


class EmulatedCluster:
    """`workers` namespaces joined by tbf-capped veth links; a context manager (see module)."""

    def __init__(self, workers: int, rate: str | None = None, tag: str | None = None,
                 cores: int | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.tag = tag or f"klb-{os.getpid()}"
        self.namespaces = [f"{self.tag}-w{i}" for i in range(workers)]
        self.bridge_namespace = f"{self.tag}-br" if workers > 2 else None
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(workers)]
        self.cores = cores or os.cpu_count() or 1
        self.rate: str | None = rate
        self._created: list[str] = []            # namespaces this object created, in order
        self._shaped: list[tuple[str, str]] = []  # (namespace, interface) of every veth end
        self._procs: list[subprocess.Popen] = []
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> EmulatedCluster:
        atexit.register(self.close)
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        if name in list_namespaces():
            raise ClusterError(f"network namespace {name} exists already (not ours: left as is)")
        _command("ip", "netns", "add", name)
        self._created.append(name)
        _command("ip", "-n", name, "link", "set", "lo", "up")

    def create(self) -> None:
        """Namespaces, links, addresses; then the current rate."""
        for name in self.namespaces:
            self._add_namespace(name)
        if self.workers == 2:
            a, b = self.namespaces
            _command("ip", "link", "add", "veth0", "netns", a, "type", "veth",
                     "peer", "name", "veth0", "netns", b)
            self._shaped += [(a, "veth0"), (b, "veth0")]
        elif self.workers > 2:
            br = self.bridge_namespace
            self._add_namespace(br)
            _command("ip", "-n", br, "link", "add", "br0", "type", "bridge")
            _command("ip", "-n", br, "link", "set", "br0", "up")
            for i, name in enumerate(self.namespaces):
                _command("ip", "link", "add", "veth0", "netns", name, "type", "veth",
                         "peer", "name", f"w{i}", "netns", br)
                _command("ip", "-n", br, "link", "set", f"w{i}", "master", "br0")
                _command("ip", "-n", br, "link", "set", f"w{i}", "up")
                self._shaped += [(name, "veth0"), (br, f"w{i}")]
        if self.workers >= 2:
            for name, address in zip(self.namespaces, self.addresses):
                _command("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "veth0")
                _command("ip", "-n", name, "link", "set", "veth0", "up")
        self.set_rate(self.rate)

    def set_rate(self, rate: str | None) -> None:
        """Cap every veth end at `rate` (tc units, e.g. '100mbit'); None/'none': no cap."""
        bps = parse_rate(rate) if rate is not None else None
        for name, dev in self._shaped:
            if bps is None:
                subprocess.run(["tc", "-n", name, "qdisc", "del", "dev", dev, "root"],
                               capture_output=True, timeout=COMMAND_TIMEOUT)  # none: fine
            else:
                _command("tc", "-n", name, "qdisc", "replace", "dev", dev, "root", "tbf",
                         "rate", rate, "burst", str(tbf_burst(bps)), "latency", TBF_LATENCY)
        self.rate = rate

    def kill_all(self) -> None:
        """SIGKILL every started process still alive (by PID) and wait for it."""
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=KILL_WAIT)
                except subprocess.TimeoutExpired:
                    pass  # unkillable (D state): nothing more we can do
        self._procs = [p for p in self._procs if p.poll() is None]

    def close(self) -> None:
        """Kill our processes, delete our namespaces (idempotent; signals held meanwhile)."""
        if self._closed:
            return
        old_mask = _block_signals()
        try:
            self.kill_all()
            existing = list_namespaces()
            for name in reversed(self._created):
                if name in existing:
                    subprocess.run(["ip", "netns", "del", name], capture_output=True,
                                   timeout=COMMAND_TIMEOUT)
            self._created = []
            self._shaped = []
            self._closed = True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        atexit.unregister(self.close)

    # ---- processes -----------------------------------------------------------------------
    def start(self, index: int, argv: list[str], *, env: dict, cwd: str | Path,
              log: Path) -> subprocess.Popen:
        """Start ARGV in worker `index`'s namespace, pinned to core `index % cores`."""
        core = index % self.cores
        with open(log, "w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespaces[index], "taskset", "-c", str(core),
                 *argv], cwd=str(cwd), env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(proc)
        return proc

    def run(self, argvs: list[list[str]], *, envs: list[dict], cwd: str | Path,
            logs: list[Path], timeout: float, on_start=None) -> list[int]:
        """Run one command per worker (argvs[i] in namespace i); wait for all.

        Raises `WorkerFailed` (after killing the others: they would wait in a collective for
        ever) when one exits non-zero or the run passes `timeout` seconds.
        """
        procs = [self.start(i, argv, env=env, cwd=cwd, log=log)
                 for i, (argv, env, log) in enumerate(zip(argvs, envs, logs))]
        if on_start is not None:
            on_start([p.pid for p in procs])
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs):
                failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
                if failed:
                    i = failed[0]
                    raise WorkerFailed(f"worker {i} exited with status {procs[i].returncode} "
                                       f"(log: {logs[i]})")
                if time.monotonic() > deadline:
                    raise WorkerFailed(f"workers still running after {timeout:.0f} s "
                                       f"(logs: {logs[0].parent})")
                time.sleep(0.2)
            for i, p in enumerate(procs):
                if p.returncode != 0:
                    raise WorkerFailed(f"worker {i} exited with status {p.returncode} "
                                       f"(log: {logs[i]})")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    try:
                        p.wait(timeout=KILL_WAIT)
                    except subprocess.TimeoutExpired:
                        pass
            self._procs = [p for p in self._procs if p.poll() is None]
        return [p.returncode for p in procs]
