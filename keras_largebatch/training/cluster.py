"""The other workers of a multi-worker job: wait for them to come up, name the ones that are gone.

    strategy = start(lambda: tf.distribute.MultiWorkerMirroredStrategy(...), workers, index,
                     timeout_s=300)                        # strategy.py, under TF_CONFIG
    try:
        train ...
    except COLLECTIVE_ERRORS as e:                         # loop.py, multi-worker runs only
        raise lost_worker(e, updates=..., checkpoint=...) from None

Rule for the start: `MultiWorkerMirroredStrategy()` starts this process's gRPC server and then
blocks in C++ holding the GIL (no other Python thread runs) until every worker has joined
TensorFlow's coordination service, silently, for up to an hour. So first, in plain Python, this
worker listens on its own `host:port` (a placeholder socket, so peers can see it) and probes the
peers' with TCP connects, printing `waiting for workers ... (20 s of 300)` every
`report_every_s`; once all answer, it closes the placeholder and creates the strategy with
TensorFlow's own registration timeout set to the time left. After `timeout_s` in all it raises
`WorkersNotUp` (exit status 2) naming the workers that never answered.

Rule for a failure: a collective whose peer died fails at once on this host (connection reset
or refused: `UnavailableError`), one whose peer hangs fails after the collective timeout
(`make_strategy.collective_timeout_s`: `DeadlineExceededError`); after either, TensorFlow aborts
every later collective of the process. `lost_worker` turns that into `LostWorker` (exit status
5) naming the peers that no longer accept connections, the last update done and the last
checkpoint; every worker is restarted with the same command to resume from that checkpoint.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

import tensorflow as tf

from keras_largebatch.errors import UserInputError

# What TensorFlow raises in a collective when a peer dies, hangs or aborts (checked on TF 2.21,
# CPU, localhost: a killed peer gives UnavailableError; a timeout DeadlineExceededError; later
# collectives of an aborted executor CancelledError / AbortedError / InternalError).
COLLECTIVE_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                     tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError)


class WorkersNotUp(UserInputError):
    """Peers did not join within the connect timeout (exit 2, via os._exit: see module doc)."""

    exit_hard = True


class LostWorker(RuntimeError):
    """A peer died or hung during training (exit signals.EXIT_LOST_WORKER = 5, via os._exit)."""

    exit_hard = True

    @property
    def line(self) -> str:
        return str(self).splitlines()[0]


def accepts(address: str, timeout_s: float = 1.0) -> bool:
    """True if something listens on `host:port` (one TCP connect, closed at once)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def unreachable(workers: list[str], index: int) -> list[str]:
    """`host:port (index i)` of every other worker that does not accept a connection."""
    return [f"{address} (index {i})" for i, address in enumerate(workers)
            if i != index and not accepts(address)]


def start(create: Callable[[], tf.distribute.Strategy], workers: list[str], index: int, *,
          timeout_s: float, report_every_s: float = 10.0, poll_s: float = 0.5,
          ) -> tf.distribute.Strategy:
    """Wait (printing progress) until every other worker listens, then `create()` the strategy.

    Raises `WorkersNotUp` if the cluster has not formed after `timeout_s` seconds in all.
    """
    began = time.monotonic()
    missing = _await_peers(workers, index, timeout_s, report_every_s, poll_s)
    left_ms = max(1000, int(1000 * (timeout_s - (time.monotonic() - began))))
    if not missing:
        _register_timeout(workers, left_ms)
        try:
            return create()
        except tf.errors.DeadlineExceededError:  # a peer went away after it was seen
            missing = unreachable(workers, index)
    what = (f"workers {', '.join(missing)} did not come up" if missing else
            f"the workers' ports accept connections but the cluster {workers} did not form "
            f"(another program on a port, or a worker with a different TF_CONFIG?)")
    raise WorkersNotUp(
        f"{what} within make_strategy.connect_timeout_s={timeout_s:g} s; start the same "
        f"command on every worker with its own TF_CONFIG task index, check the addresses and "
        f"firewall, or raise make_strategy.connect_timeout_s")


def _await_peers(workers: list[str], index: int, timeout_s: float, report_every_s: float,
                 poll_s: float) -> list[str]:
    """Listen on this worker's port and probe the others' until all answer; those that don't.

    The placeholder listener lets peers that are still probing see this worker; it is closed
    before TensorFlow's server binds the same port (peers probing in between retry)."""
    began = time.monotonic()
    port = int(workers[index].rpartition(":")[2])
    try:  # all interfaces, as TensorFlow's server binds: the named host may be a forwarded name
        listener = (socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
                    if socket.has_dualstack_ipv6() else socket.create_server(("", port)))
    except OSError as e:
        raise UserInputError(
            f"cannot listen on port {port} of {workers[index]} (TF_CONFIG task index {index}): "
            f"{e.strerror}; free that port or change this worker's address in TF_CONFIG"
        ) from None
    try:
        next_report = report_every_s
        while True:
            missing = unreachable(workers, index)
            waited = time.monotonic() - began
            if not missing or waited >= timeout_s:
                return missing
            if waited >= next_report:
                print(f"waiting for workers {', '.join(missing)} ({waited:.0f} s of "
                      f"{timeout_s:g})", file=sys.stderr, flush=True)
                next_report += report_every_s
            time.sleep(poll_s)
    finally:
        listener.close()


def _register_timeout(workers: list[str], timeout_ms: int) -> None:
    """TensorFlow's own limit on joining the cluster (coordination service registration
    barrier; TF's default is one hour): configured as MultiWorkerMirroredStrategy would,
    plus `cluster_register_timeout_in_ms`. The strategy then raises DeadlineExceededError."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return  # configured by the caller already
    context.context().configure_coordination_service(
        service_type="standalone", service_leader="/job:worker/replica:0/task:0",
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker",
                                                                 num_tasks=len(workers))],
        cluster_register_timeout_in_ms=timeout_ms)


def lost_worker(error: Exception, *, workers: list[str], index: int, updates: int,
                checkpoint: str | None, timeout_s: float | None) -> LostWorker:
    """The one-line `LostWorker` for a collective `error` raised after `updates` updates."""
    gone = unreachable(workers, index)
    who = (f"worker {', '.join(gone)}" if gone else
           "another worker (it still accepts connections: hung, or slower than "
           f"make_strategy.collective_timeout_s={timeout_s})")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line.split("aborted by:", 1)[1].strip() for line in lines
                   if "aborted by:" in line), lines[-1] if lines else "")
    return LostWorker(
        f"lost contact with {who} during training after update {updates} "
        f"({type(error).__name__}: {detail[:120]}); the last checkpoint is "
        f"{checkpoint or 'none (the run starts afresh)'}; restart every worker with the same "
        f"command to resume")
