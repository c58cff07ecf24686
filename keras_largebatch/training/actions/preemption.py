"""Preemption action: after SIGTERM / SIGINT, save at the next step boundary and stop.

The signal handler (training/signals.py) only records the signal; this action, run after every
update, checks the run is sound (divergence check), saves a checkpoint at this update and stops
the run with status "interrupted" (exit status 128 + N). On an epoch's last update it waits for
the epoch end, so the epoch's evaluation and record are in the checkpoint.
"""

from __future__ import annotations

import signal
import sys

from keras_largebatch.training.actions import Action, Outcome, StepOutput, Stop
from keras_largebatch.training.actions.divergence import DivergenceCheck
from keras_largebatch.training.checkpoint import Checkpointer
from keras_largebatch.training.signals import SignalCatcher


class PreemptionCheckpoint(Action):
    def __init__(self, catcher: SignalCatcher, checkpointer: Checkpointer,
                 divergence: DivergenceCheck, *, epochs: int):
        self.catcher, self.checkpointer, self.divergence = catcher, checkpointer, divergence
        self.epochs = epochs

    def __call__(self, out: StepOutput) -> Outcome | None:
        signum = self.catcher.received
        if signum is None:
            return None
        if out.epoch_end:  # the checkpoint action saved the epoch end just before
            return self._stop(signum, out.epoch + 1, 0) if out.epoch + 1 < self.epochs else None
        if out.last:
            return None  # the epoch end saves, after the evaluation
        outcome = self.divergence.check(out, before_save=True)
        if outcome is not None:
            return outcome
        self.checkpointer.save(out.updates)
        return self._stop(signum, out.epoch, out.step)

    def _stop(self, signum: int, epoch: int, step: int) -> Stop:
        name = signal.Signals(signum).name
        print(f"interrupted by {name} at epoch {epoch + 1}, step {step}; saved "
              f"{self.checkpointer.latest()}; rerun the same command to resume",
              file=sys.stderr, flush=True)
        return Stop("interrupted", {"interrupted_by": name, "interrupted_by_signal": int(signum)})
