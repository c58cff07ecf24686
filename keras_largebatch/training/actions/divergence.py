"""Divergence action: a non-finite loss, or one above `train.loss_upper_bound`, stops the run or
rolls it back (training/divergence.py has the guard and the rules).

    train.on_divergence = 'stop'      Stop("diverged"): results.json status "diverged", exit 3
    train.on_divergence = 'restore'   Rewind to the latest checkpoint with the LR x factor, at
                                      most train.max_restores times, then stop as above

Checked every `log_every_steps` updates and on an epoch's last update, and before every save:
the loop installs `check` as the checkpointer's save guard (`Checkpointer.save_sound`), so a
checkpoint is written only when the loss window is finite and within bound AND every model and
optimizer variable is finite, and the latest checkpoint is always a good one to roll back to.
"""

from __future__ import annotations

import sys

from keras_largebatch.training.actions import Action, Outcome, Rewind, StepOutput, Stop
from keras_largebatch.training.checkpoint import Checkpointer, Position
from keras_largebatch.training.divergence import DivergenceGuard


class DivergenceCheck(Action):
    """Watches the running loss sums; decides stop or roll-back."""

    def __init__(self, guard: DivergenceGuard, checkpointer: Checkpointer, *, metrics,
                 progress, variables, log_every_steps: int, summaries=None):
        self.guard, self.checkpointer = guard, checkpointer
        self.metrics, self.progress, self.summaries = metrics, progress, summaries
        self.log_every_steps = int(log_every_steps)
        self._finite = guard.finite_check(variables)

    def begin_epoch(self, position: Position) -> None:
        self.guard.rebase(self.metrics)

    def __call__(self, out: StepOutput) -> Outcome | None:
        if out.epoch_end or not (out.updates % self.log_every_steps == 0 or out.last):
            return None
        return self.check(out, before_save=out.last)

    def check(self, out: StepOutput, *, before_save: bool) -> Outcome | None:
        """The loss since the last check (and, before a save, the weights): None if sound."""
        reason = self.guard.check(self.metrics)
        if reason is None and before_save and not self._finite():
            reason = "non-finite weights or optimizer state"
        return None if reason is None else self._diverged(reason, out)

    def _diverged(self, reason: str, out: StepOutput) -> Outcome:
        where = f"epoch {out.epoch + 1}, step {out.step} (update {out.updates})"
        guard, state = self.guard, self.checkpointer.state
        restores = state.restores
        if guard.mode == "restore" and restores < guard.max_restores:
            return self._roll_back(reason, where, out, restores)
        fix = ("train.max_restores exhausted; lower train.learning_rate" if guard.mode == "restore"
               else "lower train.learning_rate or set train.on_divergence = 'restore'")
        print(f"error: training diverged at {where}: {reason}; {fix}", file=sys.stderr,
              flush=True)
        self._event(f"diverged at {where}: {reason}", out.epoch)
        divergence = {"epoch": out.epoch + 1, "step": out.step, "update": out.updates,
                      "reason": reason, "restores": restores}
        return Stop("diverged", {"divergence": divergence, "diverged_epoch": out.epoch + 1})

    def _roll_back(self, reason: str, where: str, out: StepOutput, restores: int) -> Rewind:
        guard, checkpointer = self.guard, self.checkpointer
        multiplier = float(guard.lr_multiplier.numpy()) * guard.lr_factor
        latest = checkpointer.latest()
        checkpointer.restore_from(latest)
        checkpointer.state.restores = restores + 1
        guard.lr_multiplier.assign(multiplier)
        # Checkpoints are written in every epoch before its first update can diverge (the
        # epoch-end save of the previous epoch, or the initial save in restore mode).
        if int(self.progress.epoch_index.numpy()) != out.epoch:
            raise RuntimeError(f"{latest} is not in epoch {out.epoch + 1}; cannot roll back")
        step = int(self.progress.step_in_epoch.numpy())
        self.progress.begin_epoch(out.epoch, out.steps, step)
        if step == 0:
            self.metrics.reset()
        message = (f"training diverged at {where}: {reason}; rolled back to {latest} "
                   f"(step {step}) with the learning rate x{multiplier:g} "
                   f"(restore {restores + 1} of {guard.max_restores})")
        print(f"warning: {message}", file=sys.stderr, flush=True)
        self._event(message, out.epoch)
        return Rewind(Position(out.epoch, step, checkpointer.state.updates))

    def _event(self, message: str, epoch: int) -> None:
        if self.summaries is not None:
            self.summaries.text("events", message, step=epoch + 1)
