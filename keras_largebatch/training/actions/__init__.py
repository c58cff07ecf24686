"""Small callables the loop runs after every update and after every epoch's evaluation.

    for action in actions:                       # training/epoch.py (loop.py builds them)
        outcome = action(StepOutput(updates=u, epoch=e, step=i, steps=n))
        if outcome is not None: ...              # Stop(...) ends the run, Rewind(...) moves it

The loop owns the counters; an action never changes them. It only answers with an `Outcome`:
`Stop` (diverged, interrupted: the loop writes results.json with that status and returns) or
`Rewind` (a divergence roll-back restored an earlier checkpoint: the loop continues from the
position the checkpoint holds, exactly as a resumed run would). Actions, in the order the loop
runs them (stages.make_actions):

    preemption_sync.PreemptionSync    multi-worker only: all workers agree on a SIGTERM/SIGINT
    step_summaries.StepSummaries      step/* TensorBoard scalars every `log_every_steps` updates
    <train.extra_actions>             user actions (tests install fault injection here)
    divergence.DivergenceCheck        a non-finite or too-large loss: stop, or roll back
    checkpoint.PeriodicCheckpoint     every `checkpoint_every_steps` updates and every epoch end
    preemption.PreemptionCheckpoint   SIGTERM/SIGINT: save at this step boundary, then stop

No action calls another: the rule that no checkpoint holds a diverged state is the
checkpointer's own (`Checkpointer.save_sound` asks its `save_guard`, the divergence check, before
every save the checkpoint and preemption actions make). The order above still says two things:
the sync comes first, so every worker's preemption action sees the signal they agreed on at the
same update, and a user action sees each update before the checks and saves.

Write your own by subclassing `Action` (override `__call__`, and `begin_epoch` if it keeps
per-epoch state) and pass it as `train(extra_actions=[...])` or `train.extra_actions = [...]`.
With `train.steps_per_loop` > 1 the loop runs the actions after each call of up to K updates;
'auto' keeps one update per call while a user action has `every_update = True` (the default).
"""

from __future__ import annotations

import dataclasses

from keras_largebatch.training.checkpoint import Position


@dataclasses.dataclass(frozen=True)
class StepOutput:
    """What the loop reports after an update (or, with `epoch_end`, after the evaluation)."""

    updates: int       # global updates done (BA-Momentum: chunks)
    epoch: int         # 0-based epoch
    step: int          # updates done in this epoch, 1..steps
    steps: int         # updates in this epoch
    epoch_end: bool = False

    @property
    def last(self) -> bool:
        """The epoch's last update (the epoch end then saves the checkpoint)."""
        return self.step >= self.steps


@dataclasses.dataclass(frozen=True)
class Stop:
    """End the run with `status` ("diverged" | "interrupted"); `fields` go to results.json."""

    status: str
    fields: dict


@dataclasses.dataclass(frozen=True)
class Rewind:
    """Continue from `position` (the state restored from a checkpoint)."""

    position: Position


Outcome = Stop | Rewind


class Action:
    """Base class: a no-op. Subclasses override `__call__` and, if needed, `begin_epoch`.

    `every_update`: the action must see every update, so a user action with it True (the
    default) makes `train.steps_per_loop = 'auto'` one update per call (training/loop_length.py);
    set it False in an action that acts on epoch ends or is content with call boundaries.
    """

    every_update = True

    def begin_epoch(self, position: Position) -> None:
        """Called before the first update of an epoch (also when resuming or rewinding)."""

    def __call__(self, out: StepOutput) -> Outcome | None:
        return None


__all__ = ["Action", "Outcome", "Rewind", "StepOutput", "Stop"]
