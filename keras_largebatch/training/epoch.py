"""One epoch of the framework loop: its input pipeline, its updates, the actions after each
update, the evaluation, the epoch's record (history.json, results.json) and its TensorBoard
scalars.

    runner = EpochRunner(...)                       # training/loop.py builds it once
    position, stop = runner.run(epoch, phase, position)

Every epoch gets a fresh distributed pipeline (its own seeded permutation, the phase's global
batch, re-entered at `position.step` when resuming); the compiled step is the same for every
batch size. With `train.steps_per_loop = K` (or 'auto': loop_length.py) one call runs up to K
updates (steps/many_updates.py) and the actions run at the end of each call, which never crosses the
epoch's end or an update count an action acts on (`_loop_length`); a signal or a user action's
condition is seen at the first call boundary after it. After each call the actions run in order
(training/actions/); a `Rewind` from the divergence roll-back restarts the epoch's input at the
restored position, a `Stop` ends it at once (no evaluation).
"""

from __future__ import annotations

import sys
import time

import keras

from keras_largebatch.data.pipeline import steps_per_epoch, train_dataset_fn
from keras_largebatch.studies import results as rs
from keras_largebatch.training.actions import Rewind, StepOutput, Stop
from keras_largebatch.training.build import current_lr
from keras_largebatch.training.checkpoint import Position
from keras_largebatch.training.inputs import epoch_inputs, release_in_background
from keras_largebatch.training.loop_length import LoopLength


class EpochRunner:
    def __init__(self, *, config, strategy, source, parts, progress, checkpointer, summaries,
                 actions, evaluate, test_data, train_data, lars, steps_per_loop: int | str = 1,
                 validation_data=None):
        self.config, self.strategy, self.source, self.parts = config, strategy, source, parts
        self.progress, self.checkpointer, self.summaries = progress, checkpointer, summaries
        self.actions, self.evaluate, self.lars = list(actions), evaluate, lars
        self.test_data, self.train_data = test_data, train_data
        self.validation_data = validation_data  # train.validation_examples (data/validation.py)
        self.verbose = config.logging.verbose
        self.epoch_end_hook = None  # callable(epoch) after the record, before epoch-end actions
        self.loop_length = LoopLength(steps_per_loop)  # updates per compiled call (at most)
        self.boundaries = [e for e in (config.logging.every_steps,
                                       config.checkpointing.every_steps) if e]

    # ---- the updates ---------------------------------------------------------------------
    def run(self, epoch: int, phase, position: Position) -> tuple[Position, Stop | None]:
        """Train epoch `epoch` from `position` (its step, when resuming); evaluate; record."""
        parts, progress = self.parts, self.progress
        steps = steps_per_epoch(self.source.num_train, phase.batch_size)
        skip = position.step if position.epoch == epoch else 0
        if not skip:
            parts.metrics.reset()
            parts.step.reset_epoch()
        progress.begin_epoch(epoch, steps, skip)
        inputs = self._inputs(epoch, phase, skip)
        bar = keras.utils.Progbar(steps, verbose=1 if sys.stdout.isatty() else 2,
                                  stateful_metrics=["loss", "accuracy"])
        if self.verbose:
            print(f"Epoch {epoch + 1}/{self.config.optimization.epochs} (global batch "
                  f"{phase.batch_size}, {steps} steps)", flush=True)
        epoch_lr = self._begin(Position(epoch, skip, position.updates))
        epoch_start = time.perf_counter()
        steady_start, steady_from = None, None  # after the epoch's first update (step time)
        bar_every = max(1, steps // 40)
        updates, i, calls = position.updates, skip, 0
        while i < steps:
            k = self._loop_length(i, steps, updates)
            called = time.perf_counter()
            if not self.loop_length.loops:
                parts.step(inputs["iterator"])
            else:  # k updates in one compiled call (steps/many_updates.py)
                parts.step.run_updates(inputs["iterator"], k)
            self.loop_length.observe(k, time.perf_counter() - called)
            calls += 1
            updates, i = updates + k, i + k
            if steady_start is None:
                steady_start, steady_from = time.perf_counter(), i
            if self.verbose and (i // bar_every > (i - k) // bar_every or i == steps):
                bar.update(i, list(parts.metrics.result().items()))
            outcome = self._act(StepOutput(updates=updates, epoch=epoch, step=i, steps=steps))
            if isinstance(outcome, Stop):
                release_in_background(inputs)
                return Position(epoch, i, updates), outcome
            if isinstance(outcome, Rewind):  # back to a checkpoint of this epoch
                updates, i = outcome.position.updates, outcome.position.step
                epoch_lr = self._begin(outcome.position)
                release_in_background(inputs)
                inputs = self._inputs(epoch, phase, i)
        release_in_background(inputs)  # destroying an iterator can block: see inputs.py
        end = time.perf_counter()
        step_time = ((end - steady_start) / (steps - steady_from)
                     if steady_start is not None and steps > steady_from
                     else (end - epoch_start) / max(steps - skip, 1))
        self._record(epoch, phase, steps, skip, epoch_lr, end - epoch_start, step_time,
                     (steps - skip) / max(calls, 1))
        if self.epoch_end_hook is not None:  # e.g. GoodputBatch's decision, before the save
            self.epoch_end_hook(epoch)
        progress.begin_epoch(epoch + 1, steps)
        outcome = self._act(StepOutput(updates=updates, epoch=epoch, step=steps, steps=steps,
                                       epoch_end=True))
        return Position(epoch + 1, 0, updates), outcome

    def _loop_length(self, i: int, steps: int, updates: int) -> int:
        """Updates in the next compiled call: at most K (loop_length.py), never past the epoch's
        end nor past the next update at which an action acts on a count (step summaries and
        the divergence check every `log_every_steps`, a periodic checkpoint every
        `checkpoint_every_steps`), so every action sees exactly the update counts it would
        see with one update per call."""
        k = min(self.loop_length.next_k(), steps - i)
        for every in self.boundaries:
            k = min(k, every - updates % every)
        return k

    def _inputs(self, epoch: int, phase, skip: int) -> dict:
        data = self.config.data
        return epoch_inputs(self.strategy, train_dataset_fn(
            self.source, global_batch_size=phase.batch_size, epoch=epoch,
            seed=self.config.seed, skip_steps=skip, repeats=data.repeats,
            augment=self.parts.augment, indices_only=self.parts.indices_only))

    def _begin(self, position: Position) -> float:
        """Start (or re-enter) the epoch: the actions' windows, and the epoch's LR."""
        epoch_lr = self.checkpointer.begin_epoch(position,
                                                 lambda: current_lr(self.parts.optimizer))
        for action in self.actions:
            action.begin_epoch(position)
        return epoch_lr

    def _act(self, out: StepOutput) -> Stop | Rewind | None:
        for action in self.actions:
            outcome = action(out)
            if outcome is not None:
                return outcome
        return None

    # ---- the record ----------------------------------------------------------------------
    def _record(self, epoch: int, phase, steps: int, skip: int, epoch_lr: float,
                epoch_time: float, step_time: float, updates_per_call: float) -> None:
        parts, repeats = self.parts, self.config.data.repeats
        train_result = parts.metrics.result()
        test_result = self.evaluate(self.test_data)
        full = self.evaluate(self.train_data) if self.train_data is not None else None
        val = (self.evaluate(self.validation_data) if self.validation_data is not None
               else None)
        record = {
            rs.EPOCH: epoch + 1,
            rs.TRAIN_LOSS: train_result["loss"],
            rs.TRAIN_ACCURACY: train_result["accuracy"],
            rs.TEST_LOSS: test_result["loss"],
            rs.TEST_ACCURACY: test_result["accuracy"],
            rs.LEARNING_RATE: epoch_lr,
            rs.BATCH_SIZE: phase.batch_size,
            rs.EFFECTIVE_BATCH_SIZE: phase.batch_size * repeats,
            rs.REPEATS: repeats,
            rs.GRADIENT_NORM: parts.metrics.gradient_norm(),
            **parts.step.epoch_scalars(),
            **({rs.FULL_TRAIN_LOSS: full["loss"],
                rs.FULL_TRAIN_ACCURACY: full["accuracy"]} if full else {}),
            **({rs.VALIDATION_LOSS: val["loss"],
                rs.VALIDATION_ACCURACY: val["accuracy"]} if val else {}),
            rs.SAMPLES_PER_SECOND: (steps - skip) * phase.batch_size / epoch_time,
            rs.EPOCH_TIME_S: epoch_time,
            rs.STEP_TIME_S: step_time,
            rs.REPLICAS_KEY: self.strategy.num_replicas_in_sync,
        }
        self.checkpointer.history.append(record)
        self.summaries.scalars({
            "train/loss": record[rs.TRAIN_LOSS], "train/accuracy": record[rs.TRAIN_ACCURACY],
            "test/loss": record[rs.TEST_LOSS], "test/accuracy": record[rs.TEST_ACCURACY],
            "learning_rate": epoch_lr, "batch_size": phase.batch_size,
            "samples_per_second": record[rs.SAMPLES_PER_SECOND],
            "epoch_time_s": epoch_time,
            "updates_per_call": updates_per_call,  # train.steps_per_loop (TensorBoard only)
            "effective_batch_size": phase.batch_size * repeats, "repeats": repeats,
            **({"train_full/loss": full["loss"],
                "train_full/accuracy": full["accuracy"]} if full else {}),
            **({"validation/loss": val["loss"],
                "validation/accuracy": val["accuracy"]} if val else {}),
            **({"train/gradient_norm": record[rs.GRADIENT_NORM]}
               if record[rs.GRADIENT_NORM] is not None else {}),
            **parts.step.epoch_scalars(),
            **({"grad_scale": float(parts.step.grad_scale.numpy())}
               if self.config.optimization.adapt_grad_norm_every else {}),
        }, step=epoch + 1)
        if self.lars is not None:
            self.summaries.lars_trust_ratios(self.lars, step=epoch + 1)
        self.summaries.flush()
        if self.verbose:
            held = (f" - validation_loss: {val['loss']:.4f} - "
                    f"validation_accuracy: {val['accuracy']:.4f}" if val else "")
            print(f"  test_loss: {test_result['loss']:.4f} - "
                  f"test_accuracy: {test_result['accuracy']:.4f}{held}", flush=True)
