"""Where the runs of a study train: local subprocesses (the default) or Ray core tasks.

    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin [--parallel=2]
    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin --executor=ray \\
        [--ray_address=auto|host:port] [--num_cpus=1] [--num_gpus=0] [--max_retries=3]

Either way a run is the same thing, `start_run`: the real CLI process (`python -m
keras_largebatch.main ... --run_dir=<sweep_dir>/<run>`) started from the sweep's folder, its output
appended to <sweep_dir>/logs/<run>.log under a `=== <time> <command>` header (one per attempt),
with TCMalloc preloaded where installed and TF_NUM_*_THREADS set to the run's share of cores.

`LocalExecutor` starts at most `parallel` of them on this machine and polls them (today's sweep).
`RayExecutor` submits each run as one Ray task, `ray.remote(num_cpus=, num_gpus=, max_retries=)`,
whose body (`run_on_node`) starts the same CLI process on the node Ray picks and waits for it.
Ray needs a file system shared by every node at the same path: the sweep folder (runs write
their checkpoints and results.json there, the driver reads them), the repository and its
virtual environment (the command names the driver's Python and gin files by path). Nothing is
shipped back but the exit status.

Failures under Ray: a node or Ray worker that dies loses the task's return value, so Ray runs the
task again (up to `max_retries` times) and the CLI resumes from the run folder's last
checkpoint. The CLI process is started with PR_SET_PDEATHSIG = SIGTERM, so it checkpoints and
exits when its Ray worker dies instead of training on as an orphan. A CLI killed by a signal (exit
status < 0, or 128 + N after checkpointing on SIGTERM / SIGINT) raises `RunKilled`, which Ray also
retries. The driver's SIGTERM / Ctrl-C cancels the tasks (`ray.cancel`: the task stops its CLI
with SIGTERM, which checkpoints); cancelled tasks are not retried.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from keras_largebatch import validate
from keras_largebatch.allocator import with_tcmalloc
from keras_largebatch.errors import UserInputError

RAY_VERSION = "2.60.0"  # pyproject.toml [project.optional-dependencies] ray
INSTALL_RAY = f"pip install -e '.[ray]' (or pip install 'ray=={RAY_VERSION}')"
EXECUTORS = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class Job:
    """One run to train: its name, CLI command, log file and the folder it starts from."""

    name: str
    command: tuple[str, ...]
    log_path: str
    cwd: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A finished job: the CLI's exit status (None when the executor lost it) and why not."""

    name: str
    returncode: int | None
    error: str = ""


def run_env(threads: int | None) -> dict[str, str]:
    """The environment of a run on this machine: TCMalloc, quiet TF logs, `threads` TF threads."""
    env = with_tcmalloc({**os.environ,
                         "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")})
    if threads:  # share the cores instead of oversubscribing them
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        env.setdefault("TF_NUM_INTEROP_THREADS", str(threads))
    return env


def start_run(job: Job, env: dict[str, str], *, pass_fds=(), preexec_fn=None
              ) -> subprocess.Popen:
    """Start the run's CLI process, its output appended to its log under a header line."""
    with open(job.log_path, "a") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.command)}\n")
        log.flush()
        return subprocess.Popen(list(job.command), stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=job.cwd, pass_fds=pass_fds, preexec_fn=preexec_fn)


STOP_GRACE_S = 300  # seconds a stopped run gets to checkpoint before SIGKILL


def stop_process(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (the CLI checkpoints and exits), then SIGKILL after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- Local subprocesses --------------------------------------------------------------------------

class LocalExecutor:
    """At most `parallel` runs at once on this machine, each with cores/parallel TF threads.

    `lock_fd` (the sweep's flock) is inherited by every run, so the lock outlives a killed
    sweep while its runs live."""

    name = "local"

    def __init__(self, parallel: int, lock_fd: int):
        self.capacity = parallel
        self._lock_fd = lock_fd
        threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
        self._env = run_env(threads)
        self._active: dict[str, subprocess.Popen] = {}

    def submit(self, job: Job) -> None:
        self._active[job.name] = start_run(job, self._env, pass_fds=(self._lock_fd,))

    def wait(self, timeout: float) -> list[Outcome]:
        time.sleep(timeout)
        done = [n for n, p in self._active.items() if p.poll() is not None]
        return [Outcome(n, self._active.pop(n).returncode) for n in done]

    def stop(self) -> list[str]:
        """End every running run with SIGTERM (they checkpoint); their names."""
        for proc in self._active.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._active.values():
            stop_process(proc)
        names, self._active = list(self._active), {}
        return names

    def close(self) -> None:
        pass


# ---- Ray core tasks ------------------------------------------------------------------------------

class RunKilled(Exception):
    """The run's CLI process ended by a signal it did not ask for; Ray retries the task."""


def _die_with_parent() -> None:
    """In the CLI child: SIGTERM when the Ray worker that started it dies (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the worker died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _interruptible() -> None:
    """Let ray.cancel interrupt this task. Ray interrupts a running task the way Ctrl-C would
    (SIGINT to the main thread), which Python ignores when the worker inherited SIGINT as
    ignored: Ray started from a background job of a non-interactive shell (`ray start ... &`,
    a `make test` run in the background). The run then trained on to its end (seen: a
    500-epoch run 'completed' after the driver's SIGTERM). Put Python's handler back."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL)):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_on_node(job: Job, threads: int | None) -> int:
    """The body of a run's Ray task: the CLI process on this node; its exit status."""
    _interruptible()
    proc = start_run(job, run_env(threads), preexec_fn=_die_with_parent)
    try:
        # Wait in Python, not in one blocking waitpid: ray.cancel's KeyboardInterrupt is
        # delivered between bytecodes, so a plain proc.wait() would only see it after the run.
        code = None
        while code is None:
            try:
                code = proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    except BaseException:  # ray.cancel raises KeyboardInterrupt here
        stop_process(proc)
        raise
    if code < 0 or code > 128:
        raise RunKilled(f"{job.name}: the training process ended by signal "
                        f"{-code if code < 0 else code - 128} on {os.uname().nodename}")
    return code


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserInputError(f"--executor=ray needs Ray, which is not installed; install it "
                             f"with {INSTALL_RAY}") from None
    return ray


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """How runs become Ray tasks: where the cluster is and what each run reserves."""

    address: str | None = None     # None: RAY_ADDRESS, else a running local cluster, else a new one
    num_cpus: float = 1
    num_gpus: float = 0
    max_retries: int = 3

    def checked(self) -> RayOptions:
        fix = "pass what one run needs, e.g. --num_cpus=2"
        return dataclasses.replace(
            self, num_cpus=validate.positive("--num_cpus", self.num_cpus, fix=fix),
            num_gpus=validate.in_range("--num_gpus", self.num_gpus, 0, 1e6, fix=fix),
            max_retries=validate.whole("--max_retries", self.max_retries, minimum=0,
                                       fix="pass how often Ray reruns a run whose node died"))


class RayExecutor:
    """Every run as one Ray task on the cluster at `options.address` (this driver connects)."""

    name = "ray"
    capacity = sys.maxsize  # Ray queues tasks until a node has their resources

    def __init__(self, options: RayOptions):
        self._ray = ray = import_ray()
        self._options = options
        _check_reachable(options.address)
        try:
            ray.init(address=options.address, log_to_driver=False,
                     logging_level=logging.WARNING)
        except ConnectionError as e:
            raise UserInputError(
                f"--ray_address={options.address}: no Ray cluster there ({_last_line(e)}); "
                "start one with `ray start --head` or pass its address (host:port)") from None
        self._task = ray.remote(run_on_node).options(
            num_cpus=options.num_cpus, num_gpus=options.num_gpus,
            max_retries=options.max_retries, retry_exceptions=[RunKilled], name="sweep-run")
        self._active: dict = {}  # ObjectRef -> run name

    def submit(self, job: Job) -> None:
        threads = max(1, int(self._options.num_cpus))
        self._active[self._task.remote(job, threads)] = job.name

    def wait(self, timeout: float) -> list[Outcome]:
        if not self._active:
            return []
        ready, _ = self._ray.wait(list(self._active), num_returns=len(self._active),
                                  timeout=timeout)
        outcomes = []
        for ref in ready:
            name = self._active.pop(ref)
            try:
                outcomes.append(Outcome(name, self._ray.get(ref)))
            except Exception as e:  # retries spent: the task's error, or the node's
                outcomes.append(Outcome(name, None, f"Ray: {_last_line(e)}"))
        return outcomes

    def stop(self) -> list[str]:
        """Cancel every task (each stops its CLI with SIGTERM: a checkpoint); their names."""
        for ref in self._active:
            self._ray.cancel(ref, force=False)
        # Each task gives its run STOP_GRACE_S to checkpoint (stop_process); wait for all of
        # them a little longer, so a loaded node's slow save is not cut short by the driver
        # shutting Ray down (its worker's death would SIGTERM the run a second time: no save).
        self._ray.wait(list(self._active), num_returns=len(self._active),
                       timeout=STOP_GRACE_S + 60)
        names, self._active = list(self._active.values()), {}
        return names

    def close(self) -> None:
        self._ray.shutdown()


def _check_reachable(address: str | None) -> None:
    """A host:port address must answer a TCP connect (ray.init retries a dead one for minutes)."""
    if address is None or address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserInputError(f"--ray_address={address} is not 'auto' or host:port (e.g. "
                             "10.0.0.1:6379, the head's `ray start --head --port=6379`)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise UserInputError(f"--ray_address={address}: nothing answers there ({e}); start the "
                             "cluster's head with `ray start --head --port=PORT` or pass its "
                             "address") from None


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300]
