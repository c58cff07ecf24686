"""Preemption action: after SIGTERM / SIGINT, save at the next step boundary and stop.

The signal handler (training/signals.py) only records the signal; this action, run after every
update, saves a checkpoint at this update (`Checkpointer.save_sound`: unless the run diverged,
which then decides the outcome) and stops the run with status "interrupted" (exit status
128 + N). On an epoch's last update it waits for
the epoch end, so the epoch's evaluation and record are in the checkpoint.

Multi-worker: `received` is the signal all workers agreed on after this update
(actions/preemption_sync.py) instead of this process's own, so every worker saves the same
update and stops with the same status.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from keras_largebatch.training.actions import Action, Outcome, StepOutput, Stop
from keras_largebatch.training.checkpoint import Checkpointer
from keras_largebatch.training.signals import SignalCatcher


class PreemptionCheckpoint(Action):
    def __init__(self, catcher: SignalCatcher, checkpointer: Checkpointer, *, epochs: int,
                 received: Callable[[], int | None] | None = None):
        self.catcher, self.checkpointer = catcher, checkpointer
        self.epochs = epochs
        self.received = received or (lambda: catcher.received)

    def __call__(self, out: StepOutput) -> Outcome | None:
        signum = self.received()
        if signum is None:
            return None
        if out.epoch_end:  # the checkpoint action saved the epoch end just before
            return self._stop(signum, out.epoch + 1, 0) if out.epoch + 1 < self.epochs else None
        if out.last:
            return None  # the epoch end saves, after the evaluation
        outcome = self.checkpointer.save_sound(out)
        if outcome is not None:
            return outcome
        return self._stop(signum, out.epoch, out.step)

    def _stop(self, signum: int, epoch: int, step: int) -> Stop:
        name = signal.Signals(signum).name
        where = "" if self.catcher.received == signum else " (received by another worker)"
        # The chief's ckpt-<updates> (not latest(): a worker may read the chief's state file
        # before the chief has rewritten it).
        saved = os.path.join(self.checkpointer.directory, f"ckpt-{self.checkpointer.last_saved}")
        print(f"interrupted by {name}{where} at epoch {epoch + 1}, step {step}; saved "
              f"{saved}; rerun the same command to resume",
              file=sys.stderr, flush=True)
        return Stop("interrupted", {"interrupted_by": name, "interrupted_by_signal": int(signum)})
