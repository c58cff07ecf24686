"""Checkpoint action: save every `train.checkpoint_every_steps` updates and at every epoch end.

    train.checkpoint_every_steps = 1000   # updates; 0 or None: only at epoch ends

A periodic save falls on update counts that are multiples of the interval, except an epoch's
last update (the epoch end saves after the evaluation, so the record of that epoch is in it).
Before a periodic save the divergence check runs (no checkpoint ever holds non-finite values).
"""

from __future__ import annotations

from keras_largebatch.training.actions import Action, Outcome, StepOutput
from keras_largebatch.training.actions.divergence import DivergenceCheck
from keras_largebatch.training.checkpoint import Checkpointer


class PeriodicCheckpoint(Action):
    def __init__(self, checkpointer: Checkpointer, divergence: DivergenceCheck,
                 every_steps: int | None):
        self.checkpointer, self.divergence = checkpointer, divergence
        self.every_steps = int(every_steps or 0)

    def __call__(self, out: StepOutput) -> Outcome | None:
        if out.epoch_end:
            self.checkpointer.save(out.updates)
            return None
        if self.every_steps and out.updates % self.every_steps == 0 and not out.last:
            outcome = self.divergence.check(out, before_save=True)
            if outcome is not None:
                return outcome
            self.checkpointer.save(out.updates)
        return None
