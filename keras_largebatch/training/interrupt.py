"""SIGTERM / SIGINT: finish the current update, save a checkpoint, exit; and the exit status.

    with interrupt.graceful_signals():      # main.py, around train(...)
        results = train(...)
    sys.exit(interrupt.exit_status(results))

The handler only records the signal; the loop polls `requested()` after every update, saves a
checkpoint at that step boundary (or, on an epoch's last update, after the epoch's evaluation
and checkpoint), writes results.json with status "interrupted" and returns. A second signal
while that is under way stops the process at once (default action), losing only the steps
since the last checkpoint.

Exit status of the command line, which the sweep runner (keras_largebatch/sweep.py) and shell
scripts can tell apart (results.json "status" says the same):

    0           completed
    1           crashed (Python traceback; results.json not written by this attempt)
    2           bad input (one line "error: ..."; nothing written)
    3           diverged (train.on_divergence = 'stop', or restores exhausted)
    128 + N     interrupted by signal N after saving a checkpoint: 130 SIGINT, 143 SIGTERM;
                rerun the same command to resume

Under multi-worker training (TF_CONFIG set) no handler is installed: a signal that reaches one
worker cannot make the others save at the same step without an extra collective per update, so
each worker keeps the default action and the job resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_DIVERGED = 3
_requested: int | None = None


def requested() -> int | None:
    """The signal number received since `graceful_signals` was entered, else None."""
    return _requested


@contextlib.contextmanager
def graceful_signals(enabled: bool = True):
    """Turn SIGTERM/SIGINT into a request the training loop honours at a step boundary."""
    global _requested
    _requested = None
    if (not enabled or os.environ.get("TF_CONFIG")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):
        global _requested
        if _requested is not None:  # second signal: stop now
            for s in signums:
                signal.signal(s, previous[s])
            os.kill(os.getpid(), signum)
            return
        _requested = signum
        print(f"received {signal.Signals(signum).name}: saving a checkpoint at the next step "
              f"boundary, then exiting (send it again to stop at once)", file=sys.stderr,
              flush=True)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        _requested = None  # honoured by now; a later train() in this process starts clean
        for s in signums:
            signal.signal(s, previous[s])


def exit_status(results: dict | None) -> int:
    """The process exit status for a finished `train(...)` (see the table above)."""
    status = (results or {}).get("status")
    if status == "diverged":
        return EXIT_DIVERGED
    if status == "interrupted":
        return 128 + int(results.get("interrupted_by_signal") or signal.SIGTERM)
    return 0
