"""Checkpoint action: save every `train.checkpoint_every_steps` updates and at every epoch end.

    train.checkpoint_every_steps = 1000   # updates; 0 or None: only at epoch ends

A periodic save falls on update counts that are multiples of the interval, except an epoch's
last update (the epoch end saves after the evaluation, so the record of that epoch is in it).
Every save goes through `Checkpointer.save_sound`, whose guard (the divergence check, installed
by the loop) refuses to write a diverged state: then its outcome (stop or roll back) is this
action's.
"""

from __future__ import annotations

from keras_largebatch.training.actions import Action, Outcome, StepOutput
from keras_largebatch.training.checkpoint import Checkpointer


class PeriodicCheckpoint(Action):
    def __init__(self, checkpointer: Checkpointer, every_steps: int | None):
        self.checkpointer = checkpointer
        self.every_steps = int(every_steps or 0)

    def __call__(self, out: StepOutput) -> Outcome | None:
        if out.epoch_end:
            return self.checkpointer.save_sound(out)
        if self.every_steps and out.updates % self.every_steps == 0 and not out.last:
            return self.checkpointer.save_sound(out)
        return None
