"""The framework's training loop: `train(run_dir=..., ...)`, read top-down.

    python -m keras_largebatch.main --gin_file=gin/experiments/<x>.gin --run_dir=runs/x

Sections: arguments -> strategy -> data -> batch phases -> model and optimizer -> run dir ->
checkpoint restore -> epochs (phase switch, compiled step, progress bar, evaluation,
TensorBoard, checkpoint) -> results.json. Every schedule is keyed on the fractional epoch in
`Progress` (DESIGN.md), so a new batch size only means a new input pipeline: the compiled step
is reused (see step.py).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_largebatch.data import DataSource, check_batch_size, eval_dataset, get_source
from keras_largebatch.data.augment import make_augment
from keras_largebatch.data.pipeline import steps_per_epoch, train_dataset_fn, train_eval_dataset
from keras_largebatch.errors import UserInputError
from keras_largebatch.models import build_model
from keras_largebatch.optimizers.ba_momentum import BAMomentum
from keras_largebatch.optimizers.lars_callback import find_lars
from keras_largebatch.schedules import (
    BatchScaled,
    BatchSchedule,
    BatchScheduleMultiplier,
    FixedBatch,
)
from keras_largebatch.training import run_dir as rundir
from keras_largebatch.training.accumulation import plan_micro_batches
from keras_largebatch.training.checkpointing import ROLLBACK, STOP, RunKeeper, check_every_steps
from keras_largebatch.training.divergence import DivergenceGuard
from keras_largebatch.training.inputs import epoch_inputs, release_in_background
from keras_largebatch.training.metrics import RunningMetrics, example_stats
from keras_largebatch.training.optimizer_factory import create_optimizer
from keras_largebatch.training.progress import default_progress
from keras_largebatch.training.step import TrainStep, per_example_loss_fn
from keras_largebatch.training.steps.ba_step import BAChunkStep
from keras_largebatch.training.strategy import is_chief, make_strategy
from keras_largebatch.training.summaries import Summaries


def resolve_learning_rate(learning_rate, batch_schedule: BatchSchedule, phases: list, *,
                          lr_scaling: str, lr_reference_batch_size: int):
    """The schedule the optimizer sees: base LR x batch scaling rule x batch-phase multiplier.

    `lr_scaling` "linear"/"sqrt" makes `learning_rate` the LR at `lr_reference_batch_size`
    (reference 1 + linear = seed 001's base LR eta~ = eta/m). The batch schedule's LR multiplier
    (AdaBatch's decay) is applied unless `learning_rate` already composes it.
    """
    schedule = learning_rate
    if lr_scaling != "none":
        schedule = BatchScaled(schedule, batch_schedule, lr_reference_batch_size, lr_scaling)
    if not isinstance(learning_rate, BatchScheduleMultiplier) and any(
        p.lr_multiplier != 1.0 for p in phases
    ):
        schedule = BatchScheduleMultiplier(schedule, batch_schedule)
    return schedule


def _check_ba_settings(opt: BAMomentum, *, batch_size, batch_schedule, repeats,
                       max_per_replica_batch, adapt_grad_norm_every) -> None:
    """BA-Momentum feeds chunks of m0 = min_increment: other batch mechanisms do not apply."""
    if batch_schedule is not None:
        raise UserInputError("train.batch_schedule cannot be used with optimizer 'ba_momentum'"
                             " (it chooses each batch itself); remove train.batch_schedule")
    if batch_size != opt.min_increment:
        raise UserInputError(f"train.batch_size = {batch_size} must equal "
                             f"BAMomentum.min_increment = {opt.min_increment} (the chunk size "
                             f"the batch grows by); set both to the same value")
    for name, value, off in (("repeats", repeats, 1),
                             ("max_per_replica_batch", max_per_replica_batch, None),
                             ("adapt_grad_norm_every", adapt_grad_norm_every, None)):
        if value != off:
            raise UserInputError(f"train.{name} = {value!r} is not supported with optimizer "
                                 f"'ba_momentum'; remove it")


def _positive(name: str, value, kind=float) -> None:
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value) == int(value)
    if not ok or not math.isfinite(float(value)) or value <= 0:
        raise UserInputError(f"train.{name} must be a positive {kind.__name__}; got {value!r}")


def _evaluate_fn(model: keras.Model):
    loss_fn = per_example_loss_fn()

    @tf.function
    def evaluate_batch(images, labels):
        logits = model(images, training=False)
        return example_stats(labels, logits, loss_fn(labels, logits))

    def evaluate(dataset) -> dict[str, float]:
        totals = np.zeros(3)
        for images, labels in dataset:
            totals += [float(t) for t in evaluate_batch(images, labels)]
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}

    return evaluate


def _current_lr(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def train(
    *,
    run_dir: str,
    dataset: str | DataSource = "fashion_mnist",
    model: str = "cnn_fashion",
    model_options: dict | None = None,
    optimizer: str = "momentum",
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.05,
    batch_size: int = 128,
    batch_schedule=None,
    epochs: int = 8,
    seed: int = 0,
    repeats: int = 1,
    augment: str | Callable | None = None,
    log_gradient_norm: bool = False,
    adapt_grad_norm_every: int | None = None,
    max_per_replica_batch: int | None = None,
    lr_scaling: str = "none",
    lr_reference_batch_size: int = 1,
    jit_compile: bool = False,
    eval_batch_size: int = 1000,
    eval_train_set: bool = False,
    log_every_steps: int = 50,
    checkpoints_to_keep: int = 2,
    checkpoint_every_steps: int | None = 1000,
    deterministic: bool = False,
    on_divergence: str = "stop",
    loss_upper_bound: float | None = None,
    divergence_lr_factor: float = 0.5,
    max_restores: int = 3,
    overwrite: bool = False,
    verbose: bool = True,
    config_text: str = "",
    operative_config: Callable[[], str] | None = None,
    strategy: tf.distribute.Strategy | None = None,
    dry_run: bool = False,
) -> dict:
    """Train `model` on `dataset`; write TensorBoard, checkpoints and results.json to run_dir.

    `batch_size` is the global batch of distinct samples per update (all replicas); with
    `repeats=M` each update sees M augmented copies of them (seed 003), `augment` names the
    augmentation policy ("standard", "cutout", "inception"; data/augment.py) or is a callable
    `f(images, seed)`; `log_gradient_norm` records the global gradient's L2 norm per epoch and
    `adapt_grad_norm_every=N` rescales the loss as the seed-003 authors' code does. `batch_schedule`
    (AdaBatch, PiecewiseBatch, ...) replaces `batch_size` by phase, and its LR multiplier is
    applied to `learning_rate` (a float or epoch-keyed schedule); `lr_scaling` = "linear" |
    "sqrt" scales it with the phase's batch relative to `lr_reference_batch_size`. A per-replica
    batch above `max_per_replica_batch` is split into equal micro-batches whose gradients are
    accumulated into one update. `eval_train_set` also evaluates the loss on the whole training
    set each epoch (seed 002's training-loss curves). Returns the results dict. `dry_run`
    validates and builds everything (data, phases, model, optimizer, schedules), writes nothing
    and returns a summary.

    Checkpoints every `checkpoint_every_steps` updates and every epoch; rerunning resumes
    exactly (bitwise with `deterministic`, see checkpointing.py). A non-finite loss, or one
    above `loss_upper_bound`, stops the run or (`on_divergence="restore"`) rolls back to the
    last checkpoint with the LR x `divergence_lr_factor`, at most `max_restores` times
    (divergence.py).
    """
    # ---- Arguments --------------------------------------------------------------------------
    _positive("epochs", epochs, int)
    _positive("batch_size", batch_size, int)
    if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        _positive("learning_rate", learning_rate)
    check_every_steps(checkpoint_every_steps)
    guard = DivergenceGuard(on_divergence=on_divergence, loss_upper_bound=loss_upper_bound,
                            lr_factor=divergence_lr_factor, max_restores=max_restores)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)

    # ---- Strategy and data ------------------------------------------------------------------
    strategy = strategy or make_strategy()
    replicas = strategy.num_replicas_in_sync
    source = dataset if isinstance(dataset, DataSource) else get_source(dataset)
    user_batch_schedule = batch_schedule
    if batch_schedule is None:
        batch_schedule = FixedBatch(batch_size)
    phases = batch_schedule.phases(epochs)
    for p in phases:
        check_batch_size(p.batch_size, replicas, source.num_train)
        check_batch_size(p.batch_size * repeats, replicas, source.num_train * repeats,
                         what="effective batch (batch_size x repeats)")
        if max_per_replica_batch:
            plan_micro_batches(p.batch_size * repeats // replicas, max_per_replica_batch)
    learning_rate = resolve_learning_rate(learning_rate, batch_schedule, phases,
                                          lr_scaling=lr_scaling,
                                          lr_reference_batch_size=lr_reference_batch_size)

    # ---- Model and optimizer ----------------------------------------------------------------
    progress = default_progress()
    with strategy.scope():
        net = build_model(model, input_shape=source.input_shape,
                          num_classes=source.num_classes, **(model_options or {}))
        opt = create_optimizer(optimizer, learning_rate=guard.wrap_learning_rate(learning_rate))
        opt.build(net.trainable_variables)
        metrics = RunningMetrics()
    if isinstance(augment, str):  # a policy name (data/augment.py); options are gin bindings
        augment = make_augment(augment, input_shape=source.input_shape, mean=source.mean)
    if isinstance(opt, BAMomentum):  # seed 002: the optimizer picks each update's batch
        _check_ba_settings(opt, batch_size=batch_size, batch_schedule=user_batch_schedule,
                           repeats=repeats, max_per_replica_batch=max_per_replica_batch,
                           adapt_grad_norm_every=adapt_grad_norm_every)
        if opt.dataset_size is None:
            opt.dataset_size = source.num_train
        step = BAChunkStep(model=net, optimizer=opt, strategy=strategy, progress=progress,
                           metrics=metrics)
    else:
        step = TrainStep(model=net, optimizer=opt, strategy=strategy, progress=progress,
                         metrics=metrics, repeats=repeats, jit_compile=jit_compile,
                         max_per_replica_batch=max_per_replica_batch,
                         gradient_norm=log_gradient_norm or bool(adapt_grad_norm_every),
                         adapt_grad_norm_every=adapt_grad_norm_every)
    lars = find_lars(opt)
    evaluate = _evaluate_fn(net)
    test_data = eval_dataset(source, batch_size=eval_batch_size)
    train_data = (train_eval_dataset(source, batch_size=eval_batch_size) if eval_train_set
                  else None)

    if dry_run:
        return {"status": "dry_run", "dataset": source.name, "model": model,
                "parameters": int(net.count_params()), "optimizer": type(opt).__name__,
                "replicas": replicas, "learning_rate": _current_lr(opt),
                "phases": [(p.start_epoch, p.end_epoch, p.batch_size, p.lr_multiplier)
                           for p in phases]}

    # ---- Run directory (nothing is written before all checks above passed) -----------------
    chief = is_chief()
    rundir.check_compatible(run_dir, config_text, overwrite=overwrite)
    keeper = RunKeeper(run_dir=run_dir, model=net, optimizer=opt, progress=progress,
                       metrics=metrics, guard=guard, strategy=strategy, chief=chief, step=step,
                       epochs=epochs, every_steps=checkpoint_every_steps,
                       log_every_steps=log_every_steps, keep=checkpoints_to_keep,
                       overwrite=overwrite, verbose=verbose)

    # ---- Restore (checkpointing.py: what a checkpoint holds; refused before any write) ----
    start_epoch, skip_steps = keeper.restore()
    history = keeper.history  # per-epoch records, restored with the checkpoint
    if chief:
        rundir.prepare(run_dir, config_text, overwrite=overwrite)
    summaries = Summaries(run_dir, enabled=chief)
    if isinstance(step, BAChunkStep):
        step.summary_writer = summaries.writer  # per-update ba/* scalars, written in-graph
    keeper.start(summaries)
    if config_text:
        summaries.text("config", config_text)
    if operative_config is not None:
        summaries.text("operative_config", operative_config())

    # ---- Train ------------------------------------------------------------------------------
    wall_start = time.perf_counter()
    updates = keeper.updates  # global steps done (updates; BA-Momentum: chunks), restored
    for phase_index, phase in enumerate(phases):
        if phase.end_epoch <= start_epoch:
            continue
        steps = steps_per_epoch(source.num_train, phase.batch_size)
        if phase_index and phase.start_epoch >= start_epoch and verbose:
            print(f"Phase {phase_index}: global batch {phase.batch_size} from epoch "
                  f"{phase.start_epoch}", flush=True)
        summaries.text("events", f"phase {phase_index}: batch {phase.batch_size}, lr x"
                       f"{phase.lr_multiplier} from epoch {phase.start_epoch}",
                       step=phase.start_epoch)
        for epoch in range(max(phase.start_epoch, start_epoch), phase.end_epoch):
            skip = skip_steps if epoch == start_epoch else 0
            if not skip:
                metrics.reset()
                step.reset_epoch()
            progress.begin_epoch(epoch, steps, skip)

            def epoch_input(skip, phase=phase, epoch=epoch):
                return epoch_inputs(strategy, train_dataset_fn(
                    source, global_batch_size=phase.batch_size, epoch=epoch, seed=seed,
                    skip_steps=skip, repeats=repeats, augment=augment))

            inputs = epoch_input(skip)
            bar = keras.utils.Progbar(steps, verbose=1 if sys.stdout.isatty() else 2,
                                      stateful_metrics=["loss", "accuracy"])
            if verbose:
                print(f"Epoch {epoch + 1}/{epochs} (global batch {phase.batch_size}, "
                      f"{steps} steps)", flush=True)
            # the LR in force at the epoch's first update
            epoch_lr = keeper.begin_epoch(skip, lambda: _current_lr(opt))
            epoch_start = time.perf_counter()
            bar_every = max(1, steps // 40)
            i = skip
            while i < steps:
                step(inputs["iterator"])
                updates, i = updates + 1, i + 1
                if updates % log_every_steps == 0:
                    r = metrics.result()
                    summaries.scalars({"step/loss": r["loss"],
                                       "step/learning_rate": _current_lr(opt),
                                       "step/batch_size": phase.batch_size},
                                      step=int(progress.samples_seen.numpy()))
                if verbose and (i % bar_every == 0 or i == steps):
                    bar.update(i, list(metrics.result().items()))
                action = keeper.after_update(updates, epoch=epoch, step=i, steps=steps)
                if action == STOP:
                    break
                if action == ROLLBACK:  # diverged: back to the last checkpoint (this epoch)
                    updates, i = keeper.resume_update, keeper.resume_step
                    epoch_lr = keeper.begin_epoch(i, lambda: _current_lr(opt))
                    release_in_background(inputs)
                    inputs = epoch_input(i)
            release_in_background(inputs)  # destroying an iterator can block: see inputs.py
            if keeper.stopped:
                break
            epoch_time = time.perf_counter() - epoch_start
            train_result = metrics.result()
            test_result = evaluate(test_data)
            full_train = evaluate(train_data) if train_data is not None else None
            record = {
                "epoch": epoch + 1,
                "train_loss": train_result["loss"],
                "train_accuracy": train_result["accuracy"],
                "test_loss": test_result["loss"],
                "test_accuracy": test_result["accuracy"],
                "learning_rate": epoch_lr,
                "batch_size": phase.batch_size,
                "effective_batch_size": phase.batch_size * repeats,
                "repeats": repeats,
                "gradient_norm": metrics.gradient_norm(),
                **step.epoch_scalars(),
                **({"full_train_loss": full_train["loss"],
                    "full_train_accuracy": full_train["accuracy"]} if full_train else {}),
                "samples_per_second": (steps - skip) * phase.batch_size / epoch_time,
                "epoch_time_s": epoch_time,
            }
            history.append(record)
            summaries.scalars({
                "train/loss": record["train_loss"], "train/accuracy": record["train_accuracy"],
                "test/loss": record["test_loss"], "test/accuracy": record["test_accuracy"],
                "learning_rate": record["learning_rate"], "batch_size": phase.batch_size,
                "samples_per_second": record["samples_per_second"],
                "epoch_time_s": epoch_time,
                "effective_batch_size": phase.batch_size * repeats, "repeats": repeats,
                **({"train_full/loss": full_train["loss"],
                    "train_full/accuracy": full_train["accuracy"]} if full_train else {}),
                **({"train/gradient_norm": record["gradient_norm"]}
                   if record["gradient_norm"] is not None else {}),
                **step.epoch_scalars(),
                **({"grad_scale": float(step.grad_scale.numpy())}
                   if adapt_grad_norm_every else {}),
            }, step=epoch + 1)
            if lars is not None:
                summaries.lars_trust_ratios(lars, step=epoch + 1)
            summaries.flush()
            if verbose:
                print(f"  test_loss: {test_result['loss']:.4f} - "
                      f"test_accuracy: {test_result['accuracy']:.4f}", flush=True)
            progress.begin_epoch(epoch + 1, steps)
            keeper.end_epoch(updates, epoch=epoch)  # checkpoint (+ history.json)
            if keeper.stopped:
                break
        if keeper.stopped:
            break

    # ---- Results ----------------------------------------------------------------------------
    test_acc = [h["test_accuracy"] for h in history]
    results = {
        "status": keeper.status,
        "dataset": source.name,
        "model": model,
        "optimizer": optimizer,
        "replicas": replicas,
        "epochs": history,
        "final_test_accuracy": test_acc[-1] if test_acc else None,
        "best_test_accuracy": max(test_acc) if test_acc else None,
        "batch_size_per_epoch": [h["batch_size"] for h in history],
        "wall_time_s": time.perf_counter() - wall_start,
        "trace_count": step.trace_count,
        **keeper.results_fields(),
    }
    if chief:
        rundir.write_json_atomic(os.path.join(run_dir, rundir.RESULTS_FILE), results)
    keeper.finish()  # model.keras on completion; a worker's private checkpoint dir removed
    summaries.flush()
    if verbose and test_acc:
        print(f"Final test accuracy: {test_acc[-1]:.4f} (best {max(test_acc):.4f}); "
              f"results in {os.path.join(run_dir, rundir.RESULTS_FILE)}", flush=True)
    return results
