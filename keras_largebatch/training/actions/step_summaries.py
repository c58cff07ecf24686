"""Step summaries action: `step/loss`, `step/learning_rate`, `step/batch_size` to TensorBoard
every `train.log_every_steps` updates, against samples seen (comparable across batch sizes)."""

from __future__ import annotations

from keras_largebatch.training.actions import Action, Outcome, StepOutput


class StepSummaries(Action):
    def __init__(self, summaries, *, metrics, progress, current_lr, batch_size,
                 log_every_steps: int):
        self.summaries, self.metrics, self.progress = summaries, metrics, progress
        self.current_lr, self.batch_size = current_lr, batch_size  # callables
        self.log_every_steps = int(log_every_steps)

    def __call__(self, out: StepOutput) -> Outcome | None:
        if not out.epoch_end and out.updates % self.log_every_steps == 0:
            self.summaries.scalars({"step/loss": self.metrics.result()["loss"],
                                    "step/learning_rate": self.current_lr(),
                                    "step/batch_size": self.batch_size(out.epoch)},
                                   step=int(self.progress.samples_seen.numpy()))
        return None
