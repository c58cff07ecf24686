"""SIGTERM / SIGINT become a request the loop honours at a step boundary; the exit status.

    catcher = SignalCatcher()
    with catcher.installed():               # main.py, around train(...)
        results = train(..., signals=catcher)
    sys.exit(exit_status(results))

The handler only records the signal in the catcher; the preemption action
(actions/preemption.py) polls `catcher.received` after every update, saves a checkpoint at that
step boundary (or, on an epoch's last update, after the epoch's evaluation and checkpoint), and
the loop writes results.json with status "interrupted" and returns. A second signal while that
is under way stops the process at once (default action), losing only the steps since the last
checkpoint.

Exit status of the command line, which the sweep runner and shell scripts can tell apart
(results.json "status" says the same):

    0           completed
    1           crashed (Python traceback; results.json not written by this attempt)
    2           bad input (one line "error: ..."; nothing written)
    3           diverged (train.on_divergence = 'stop', or restores exhausted)
    4           disk full (one line "error: no space left on device writing <path>; ..."); the
                last checkpoint is intact: free space and rerun the same command to resume
    5           multi-worker: lost contact with another worker (one line "error: lost contact
                ..."; results.json not written by this attempt); restart every worker with the
                same command to resume from the last checkpoint (training/cluster.py)
    128 + N     interrupted by signal N after saving a checkpoint: 130 SIGINT, 143 SIGTERM;
                rerun the same command to resume

Under multi-worker training (TF_CONFIG set) the handler is installed on every worker as well:
after every update the workers all-reduce their "signal received" flags
(actions/preemption_sync.py), so a signal reaching any one worker makes every worker save the
same update and exit with the same status. TensorFlow's coordination service installs its own
C++ SIGTERM handler (tsl SigtermNotifier) when the MultiWorkerMirroredStrategy is created,
which would swallow the signal; the loop calls `reclaim()` right after creating it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_DIVERGED = 3
EXIT_DISK_FULL = 4
EXIT_LOST_WORKER = 5
SIGNUMS = (signal.SIGTERM, signal.SIGINT)


class SignalCatcher:
    """Holds the first SIGTERM/SIGINT received while `installed()` is active."""

    def __init__(self):
        self.received: int | None = None
        self._handler = None

    def reclaim(self) -> None:
        """Install the handler again (C++ code may have replaced it); no-op when not installed."""
        if self._handler is not None:
            for s in SIGNUMS:
                signal.signal(s, self._handler)

    @contextlib.contextmanager
    def installed(self, enabled: bool = True):
        """Turn SIGTERM/SIGINT into a request while the block runs (main thread only)."""
        self.received = None
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in SIGNUMS}

        def handler(signum, frame):
            if self.received is not None:  # second signal: stop now
                for s in SIGNUMS:
                    signal.signal(s, previous[s])
                os.kill(os.getpid(), signum)
                return
            self.received = signum
            print(f"received {signal.Signals(signum).name}: saving a checkpoint at the next step "
                  f"boundary, then exiting (send it again to stop at once)", file=sys.stderr,
                  flush=True)

        for s in SIGNUMS:
            signal.signal(s, handler)
        self._handler = handler
        try:
            yield self
        finally:
            self.received, self._handler = None, None  # a later run in this process starts clean
            for s in SIGNUMS:
                signal.signal(s, previous[s])


def exit_status(results: dict | None) -> int:
    """The process exit status for a finished `train(...)` (see the table above)."""
    status = (results or {}).get("status")
    if status == "diverged":
        return EXIT_DIVERGED
    if status == "interrupted":
        return 128 + int(results.get("interrupted_by_signal") or signal.SIGTERM)
    return 0
