"""An emulated cluster on one Linux machine: one network namespace per worker, veth links capped
with `tc ... tbf`, one CPU core per worker. Used by bench/cluster.py (see its docstring for the
command); needs root, `ip` and `tc` (iproute2).

    with EmulatedCluster(workers=2, rate="100mbit", user="nobody") as cluster:
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
  None removes the qdisc (unshaped veth). R reaches tc only through `tc_rate`: parsed and
  checked first (`parse_rate`), then written as whole bits per second ('100mbit' ->
  '100000000bit'), so no text a user typed is handed to tc.

Commands run as `ip netns exec <ns> [setpriv --reuid=U --regid=G --clear-groups
--no-new-privs] taskset -c <core> ARGV`: creating namespaces and links needs root, running in
one does not, so with `user` set (cluster.py: `--worker_user`, default nobody) the workers drop
to that user (no capabilities left: a uid change from 0 clears them) before anything of theirs
runs. `ip netns exec`, `setpriv` and `taskset` each exec the next, so the PID that Popen
returns is the worker's own. Workers run in their own session (a terminal's Ctrl-C reaches only
the bench, which kills them by PID).

Clean-up (`close`, idempotent; also registered with atexit): kill every started process that
is still alive (SIGKILL by PID, waited for), then `ip netns del` each namespace this object
created (deleting a namespace destroys the veths in it), in reverse order, with SIGINT/SIGTERM
blocked so that a second Ctrl-C cannot interrupt it. Namespaces this object did not create are
never touched.

A bench killed with SIGKILL cannot clean up. `stale_namespaces()` names what it left: every
`klb-<pid>-*` namespace whose PID no longer exists (a live PID's, i.e. a running bench's, is
never touched; a PID reused since by another process keeps its namespaces, conservatively);
`remove_stale()` deletes them (`bench/cluster.py --cleanup`).
"""

from __future__ import annotations

import atexit
import os
import pwd
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
MAX_RATE_BPS = 2**63 - 1     # tc keeps rates in 64-bit fields
_OURS = re.compile(r"^klb-(\d+)-")


class ClusterError(RuntimeError):
    """A namespace command or a worker failed; the message is one line."""


class WorkerFailed(ClusterError):
    """A worker exited with a non-zero status or ran past its time limit."""


def parse_rate(text: str) -> float | None:
    """'100mbit' -> 1e8 bits/s (tc's units: bit, kbit, mbit, gbit); 'none'/'unshaped' -> None.

    ValueError (naming the value and the fix) for anything else, and for a rate under 1 bit/s
    or over tc's 64-bit limit.
    """
    if not isinstance(text, str):
        raise ValueError(f"bad link rate {text!r}: give a string such as 100mbit, 1gbit or none")
    clean = text.strip().lower()
    if clean in UNSHAPED:
        return None
    m = _RATE.match(clean)
    bps = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not m or not 1 <= round(bps) <= MAX_RATE_BPS:
        raise ValueError(f"bad link rate {text!r}: give a rate of at least 1bit as a number and "
                         f"one of bit, kbit, mbit, gbit (e.g. 100mbit, 1gbit, 10gbit), or none")
    return bps


def tc_rate(text: str) -> str | None:
    """The rate as tc receives it: whole bits per second ('1.5gbit' -> '1500000000bit'), or
    None for an unshaped link; ValueError from `parse_rate` before anything reaches tc."""
    bps = parse_rate(text)
    return None if bps is None else f"{round(bps)}bit"


def requirements_error(euid: int | None = None, which=shutil.which,
                       tools=("ip", "tc", "taskset")) -> str | None:
    """Why the emulated cluster cannot run here (one line), or None."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return "the emulated cluster needs root (network namespaces and tc); run it as root"
    missing = [tool for tool in tools if which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not found on PATH; install iproute2 (ip, tc) and "
                f"util-linux (taskset, setpriv)")
    return None


def worker_identity(user: str) -> tuple[int, int]:
    """(uid, gid) of `user`; ClusterError (one line, with the fix) if there is no such user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ClusterError(f"no user {user!r} on this machine to run the workers as: give an "
                           f"existing user (--worker_user=nobody) or --worker_user=root") from None
    return entry.pw_uid, entry.pw_gid


def drop_to(uid: int, gid: int) -> list[str]:
    """The command prefix that runs the rest as uid:gid, no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
            "--"]


def access_problem(identity: tuple[int, int], *, run: str, read: str, write: str) -> str | None:
    """What uid:gid cannot do of: execute `run`, read `read`, write in the folder `write` (each
    path through every parent folder, as the kernel checks it), or None. One `setpriv` + `sh`."""
    checks = [("-x", run, "execute"), ("-r", read, "read"), ("-w", write, "write in")]
    script = "; ".join(f'test {flag} "${i + 1}" || echo {i}'
                       for i, (flag, _, _) in enumerate(checks))
    proc = subprocess.run([*drop_to(*identity), "sh", "-c", script, "sh",
                           *[path for _, path, _ in checks]],
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    failed = [checks[int(i)] for i in proc.stdout.split()]
    if proc.returncode != 0 and not failed:
        return f"cannot be switched to ({proc.stderr.strip() or 'setpriv failed'})"
    if not failed:
        return None
    return "cannot " + ", ".join(
        f"{verb} {path}" + (f" (= {os.path.realpath(path)})"
                            if os.path.realpath(path) != path else "")
        for _, path, verb in failed)


def tbf_burst(rate_bps: float) -> int:
    """Bucket size in bytes: 1 ms at the rate, at least 16 KiB (a few full-size packets)."""
    return max(int(rate_bps / 8 / 1000), 16384)


def list_namespaces() -> set[str]:
    """Names of the network namespaces that exist now (`ip netns list`)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (signal 0: nothing is sent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def stale_namespaces(names, alive=pid_alive) -> list[str]:
    """The `klb-<pid>-*` names among `names` whose PID is gone, sorted; nothing else."""
    return sorted(n for n in names if (m := _OURS.match(n)) and not alive(int(m.group(1))))


def remove_stale(alive=pid_alive) -> tuple[list[str], list[str]]:
    """Delete the namespaces of benches that are gone; (removed, kept: a live PID's)."""
    names = list_namespaces()
    stale = stale_namespaces(names, alive)
    for name in stale:
        _command("ip", "netns", "del", name)
    kept = sorted(n for n in names if _OURS.match(n) and n not in stale)
    return stale, kept


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
                 cores: int | None = None, user: str | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        tc_rate(rate) if rate is not None else None  # refuse a bad rate before creating anything
        # (uid, gid) the workers run as; None: the caller's (root). May be set before `start`.
        self.identity = worker_identity(user) if user not in (None, "root") else None
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
        """Cap every veth end at `rate` (tc units, e.g. '100mbit'); None/'none': no cap.

        The rate is validated (ValueError) before any tc command runs, and tc gets its
        canonical form (`tc_rate`), never the text as given.
        """
        tc = tc_rate(rate) if rate is not None else None
        for name, dev in self._shaped:
            if tc is None:
                subprocess.run(["tc", "-n", name, "qdisc", "del", "dev", dev, "root"],
                               capture_output=True, timeout=COMMAND_TIMEOUT)  # none: fine
            else:
                _command("tc", "-n", name, "qdisc", "replace", "dev", dev, "root", "tbf",
                         "rate", tc, "burst", str(tbf_burst(parse_rate(tc))),
                         "latency", TBF_LATENCY)
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
        """Start ARGV in worker `index`'s namespace, pinned to core `index % cores`, as the
        cluster's user (root if none)."""
        core = index % self.cores
        user = drop_to(*self.identity) if self.identity else []
        with open(log, "w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespaces[index], *user, "taskset", "-c",
                 str(core), *argv], cwd=str(cwd), env=env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
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
