"""The framework's training loop, read top-down: `train(run_dir=..., epochs=..., ...)`.

    python -m keras_largebatch.main --gin_file=gin/experiments/<x>.gin --run_dir=runs/x

`train()` takes the flat names users bind (`train.epochs`, `train.batch_size`, ...), groups and
checks them (run_config.py) and calls `run()`, whose sections are: set-up (checks, seeds) ->
strategy and data -> batch phases and learning rate -> model, optimizer, train step -> run
directory and restore -> actions -> epochs -> results.json.

Progress is counted in epochs, not steps: every schedule reads the fractional epoch in
`Progress` (schedules/progress.py), because steps per epoch change whenever the batch size does.
A new batch phase therefore only means a new input pipeline; the compiled step is reused
(steps/train_step.py). Nothing is written before every check has passed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from keras_largebatch.data import DataSource, get_source
from keras_largebatch.data.eval_inputs import eval_dataset_fn
from keras_largebatch.errors import as_user_error
from keras_largebatch.goodput.adascale import AdaScaled
from keras_largebatch.optimizers.lars_callback import find_lars
from keras_largebatch.schedules.progress import default_progress
from keras_largebatch.studies import results as rs
from keras_largebatch.training import build, cluster
from keras_largebatch.training import run_dir as rundir
from keras_largebatch.training.actions import Stop
from keras_largebatch.training.actions.checkpoint import PeriodicCheckpoint
from keras_largebatch.training.actions.divergence import DivergenceCheck
from keras_largebatch.training.actions.preemption import PreemptionCheckpoint
from keras_largebatch.training.actions.preemption_sync import PreemptionSync
from keras_largebatch.training.actions.step_summaries import StepSummaries
from keras_largebatch.training.checkpoint import Checkpointer
from keras_largebatch.training.components import Components
from keras_largebatch.training.divergence import DivergenceGuard
from keras_largebatch.training.epoch import EpochRunner
from keras_largebatch.training.goodput_control import GoodputControl
from keras_largebatch.training.precision import precision_policy
from keras_largebatch.training.run_config import RunConfig
from keras_largebatch.training.run_lock import RunDirLock
from keras_largebatch.training.signals import SignalCatcher
from keras_largebatch.training.steps.ba_step import BAChunkStep
from keras_largebatch.training.strategy import collective_timeout_s, is_chief, workers
from keras_largebatch.training.summaries import Summaries


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
    gradient_noise_scale: bool | None = None,
    jit_compile: bool = False,
    precision: str = "float32",
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
    extra_actions: Sequence = (),
    overwrite: bool = False,
    verbose: bool = True,
    config_text: str = "",
    operative_config: Callable[[], str] | None = None,
    strategy: tf.distribute.Strategy | None = None,
    components: Components | None = None,
    signals: SignalCatcher | None = None,
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
    "sqrt" scales it with the phase's batch relative to `lr_reference_batch_size`, "adascale"
    by AdaScale's gain from the measured gradient noise scale (goodput/adascale.py);
    `gradient_noise_scale` measures |G|^2, tr(Sigma) and B_simple (goodput/noise_scale.py; None:
    on where AdaScale or GoodputBatch needs it). A per-replica
    batch above `max_per_replica_batch` is split into equal micro-batches whose gradients are
    accumulated into one update. `eval_train_set` also evaluates the loss on the whole training
    set each epoch (seed 002's training-loss curves). `extra_actions` run after every update
    (training/actions/). Returns the results dict. `dry_run` validates and builds everything
    (data, phases, model, optimizer, schedules), writes nothing and returns a summary.
    `precision` = "mixed_bfloat16" | "mixed_float16" sets the Keras dtype policy for the run
    (restored afterwards; float32 logits, loss and optimizer statistics: precision.py).

    Checkpoints every `checkpoint_every_steps` updates and every epoch; rerunning resumes
    exactly (bitwise with `deterministic`, see checkpoint.py). A non-finite loss, or one
    above `loss_upper_bound`, stops the run or (`on_divergence="restore"`) rolls back to the
    last checkpoint with the LR x `divergence_lr_factor`, at most `max_restores` times
    (divergence.py). `signals` (main.py installs one) turns SIGTERM/SIGINT into a checkpoint
    and a clean stop.
    """
    config = RunConfig.from_train_args(
        dataset=dataset, model=model, model_options=model_options, optimizer=optimizer,
        learning_rate=learning_rate, batch_size=batch_size, batch_schedule=batch_schedule,
        epochs=epochs, seed=seed, repeats=repeats, augment=augment,
        log_gradient_norm=log_gradient_norm, adapt_grad_norm_every=adapt_grad_norm_every,
        max_per_replica_batch=max_per_replica_batch, lr_scaling=lr_scaling,
        lr_reference_batch_size=lr_reference_batch_size, jit_compile=jit_compile,
        eval_batch_size=eval_batch_size, eval_train_set=eval_train_set,
        log_every_steps=log_every_steps, checkpoints_to_keep=checkpoints_to_keep,
        checkpoint_every_steps=checkpoint_every_steps, deterministic=deterministic,
        on_divergence=on_divergence, loss_upper_bound=loss_upper_bound,
        divergence_lr_factor=divergence_lr_factor, max_restores=max_restores, verbose=verbose,
        extra_actions=extra_actions, precision=precision,
        gradient_noise_scale=gradient_noise_scale)
    return run(config, run_dir=run_dir, overwrite=overwrite, config_text=config_text,
               operative_config=operative_config, strategy=strategy,
               components=components or Components(), signals=signals or SignalCatcher(),
               dry_run=dry_run)


def run(config: RunConfig, *, run_dir: str, components: Components, signals: SignalCatcher,
        overwrite: bool = False, config_text: str = "",
        operative_config: Callable[[], str] | None = None,
        strategy: tf.distribute.Strategy | None = None, dry_run: bool = False) -> dict:
    """Train as `config` says (see `train`) under its dtype policy; returns the results dict.
    The run dir's lock (run_lock.py), taken once every check has passed, is released and the
    previous dtype policy restored when this returns."""
    lock = RunDirLock(run_dir)
    try:
        with precision_policy(config.optimization.precision):
            return _run(config, run_dir=run_dir, components=components, signals=signals,
                        overwrite=overwrite, config_text=config_text,
                        operative_config=operative_config, strategy=strategy,
                        dry_run=dry_run, lock=lock)
    finally:
        lock.release()


def _run(config: RunConfig, *, run_dir: str, components: Components, signals: SignalCatcher,
         overwrite: bool, config_text: str, operative_config: Callable[[], str] | None,
         strategy: tf.distribute.Strategy | None, dry_run: bool, lock: RunDirLock) -> dict:
    o, ckpt, verbose = config.optimization, config.checkpointing, config.logging.verbose
    # Everything before the first update: any failure is one error line, exit 2 (errors.py)
    with as_user_error("setting up the run"):
        # ---- Set-up: checks first, then seeds ---------------------------------------------------
        guard = DivergenceGuard(on_divergence=ckpt.on_divergence,
                                loss_upper_bound=ckpt.loss_upper_bound,
                                lr_factor=ckpt.divergence_lr_factor, max_restores=ckpt.max_restores)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(config.seed)

        # ---- Strategy and data ------------------------------------------------------------------
        strategy = strategy or components.make_strategy()
        signals.reclaim()  # MultiWorkerMirroredStrategy's coordination service takes SIGTERM
        replicas = strategy.num_replicas_in_sync
        source = (config.data.dataset if isinstance(config.data.dataset, DataSource)
                  else get_source(config.data.dataset, sources=components.sources))

        # ---- Batch phases and the learning rate -------------------------------------------------
        phases = build.plan_phases(config, source, replicas)
        learning_rate = build.resolve_learning_rate(
            o.learning_rate, build.batch_schedule_of(config), phases, lr_scaling=o.lr_scaling,
            lr_reference_batch_size=o.lr_reference_batch_size)

        # ---- Model, optimizer, train step -------------------------------------------------------
        progress = default_progress()
        progress.begin_epoch(0, 1)  # this loop drives the clock (restore sets the real position)
        parts = build.build_parts(config, components, strategy, source, progress,
                                  learning_rate=learning_rate, guard=guard)
        if isinstance(learning_rate, AdaScaled):  # AdaScale reads the step's noise statistics
            learning_rate.attach(parts.step.noise_scale.stats)
        evaluate = build.evaluate_fn(parts.model, strategy)  # sharded: replicas and workers
        test_data = eval_dataset_fn(source, split="test", batch_size=config.data.eval_batch_size)
        train_data = (eval_dataset_fn(source, split="train",
                                      batch_size=config.data.eval_batch_size)
                      if config.data.eval_train_set else None)
        if dry_run:
            return {"status": "dry_run", "dataset": source.name, "model": o.model,
                    "parameters": int(parts.model.count_params()),
                    "optimizer": type(parts.optimizer).__name__, "replicas": replicas,
                    "learning_rate": build.current_lr(parts.optimizer),
                    "phases": [(p.start_epoch, p.end_epoch, p.batch_size, p.lr_multiplier)
                               for p in phases]}

        # ---- Run directory and restore (nothing is written before the checks above) ------------
        chief = is_chief()
        rundir.check_target(run_dir, overwrite=overwrite)  # links, home, cwd, a user's own folder
        rundir.check_usable(run_dir)  # writable parent; run files of the right kind
        if chief:  # only the chief writes run_dir; workers may share it over NFS
            lock.acquire()  # "in use by process PID"
        rundir.check_compatible(run_dir, config_text, overwrite=overwrite)
        checkpointer = Checkpointer(
            run_dir=run_dir, model=parts.model, optimizer=parts.optimizer, progress=progress,
            metrics=parts.metrics, strategy=strategy, chief=chief, step=parts.step,
            lr_multiplier=guard.lr_multiplier, keep=ckpt.keep, overwrite=overwrite, verbose=verbose)
        position = checkpointer.restore()  # refused (UserInputError) before any write
        schedule = build.batch_schedule_of(config)
        control = None
        if getattr(schedule, "adaptive", False):  # GoodputBatch: decisions from the checkpoint
            control = GoodputControl(schedule, config=config, source=source, replicas=replicas,
                                     step=parts.step, summaries=None, verbose=verbose)
            phases = control.resume(checkpointer.state)
        if chief:
            rundir.prepare(run_dir, config_text, overwrite=overwrite)
        summaries = Summaries(run_dir, enabled=chief)
        if control is not None:
            control.summaries = summaries
        if isinstance(parts.step, BAChunkStep):
            parts.step.summary_writer = summaries.writer  # per-update ba/* scalars, in-graph
        if config_text:
            summaries.text("config", config_text)
        if operative_config is not None:
            summaries.text("operative_config", operative_config())

        # ---- Actions after every update (training/actions/) -------------------------------------
        divergence = DivergenceCheck(
            guard, checkpointer, metrics=parts.metrics, progress=progress,
            variables=[*parts.model.variables, *parts.optimizer.variables],
            log_every_steps=config.logging.every_steps, summaries=summaries)
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        sync = PreemptionSync(signals, strategy) if multi_worker else None  # same update everywhere
        actions = [
            *([sync] if sync else []),
            StepSummaries(summaries, metrics=parts.metrics, progress=progress,
                          current_lr=lambda: build.current_lr(parts.optimizer),
                          batch_size=lambda epoch: schedule.batch_size(float(epoch)),
                          log_every_steps=config.logging.every_steps),
            *config.extra_actions,
            divergence,
            PeriodicCheckpoint(checkpointer, divergence, ckpt.every_steps),
            PreemptionCheckpoint(signals, checkpointer, divergence, epochs=o.epochs,
                                 received=sync.received if sync else None),
        ]
        if guard.mode == "restore" and checkpointer.last_saved is None:
            checkpointer.save(0)  # a checkpoint to roll back to before the first one is due

    # ---- Train ------------------------------------------------------------------------------
    runner = EpochRunner(config=config, strategy=strategy, source=source, parts=parts,
                         progress=progress, checkpointer=checkpointer, summaries=summaries,
                         actions=actions, evaluate=evaluate, test_data=test_data,
                         train_data=train_data, lars=find_lars(parts.optimizer))
    plan = {"phases": phases}  # re-planned when an adaptive schedule decides (GoodputBatch)
    if control is not None:
        runner.epoch_end_hook = lambda epoch: _replan(
            plan, control.after_epoch(epoch, checkpointer.history))
    wall_start = time.perf_counter()
    stop: Stop | None = None
    entered = None
    try:
        while position.epoch < o.epochs and stop is None:
            epoch = position.epoch
            phase = phase_of(plan["phases"], epoch)
            if phase != entered:
                index = plan["phases"].index(phase)
                if index and phase.start_epoch >= epoch and verbose:
                    print(f"Phase {index}: global batch {phase.batch_size} from epoch "
                          f"{phase.start_epoch}", flush=True)
                summaries.text("events", f"phase {index}: batch {phase.batch_size}, lr x"
                               f"{phase.lr_multiplier} from epoch {phase.start_epoch}",
                               step=phase.start_epoch)
                entered = phase
            if control is not None:
                control.enter_epoch(epoch)
            position, stop = runner.run(epoch, phase, position)
    except cluster.COLLECTIVE_ERRORS as e:  # a peer died or hung: every worker must restart
        if not multi_worker:
            raise
        addresses, index = workers()
        raise cluster.lost_worker(e, workers=addresses, index=index, updates=sync.updates,
                                  checkpoint=checkpointer.latest(),
                                  timeout_s=collective_timeout_s(strategy)) from None

    # ---- Results ----------------------------------------------------------------------------
    history = checkpointer.history
    test_acc = [h[rs.TEST_ACCURACY] for h in history]
    weights_sha256 = checkpointer.weights_sha256()
    results = {
        rs.STATUS: stop.status if stop else rs.COMPLETED,
        "dataset": source.name,
        "model": o.model,
        "optimizer": o.optimizer,
        "replicas": replicas,
        rs.EPOCHS: history,
        rs.FINAL_TEST_ACCURACY: test_acc[-1] if test_acc else None,
        rs.BEST_TEST_ACCURACY: max(test_acc) if test_acc else None,
        rs.BATCH_SIZE_PER_EPOCH: [h[rs.BATCH_SIZE] for h in history],
        rs.WALL_TIME_S: time.perf_counter() - wall_start,
        "trace_count": parts.step.trace_count,
        rs.RESTORES: checkpointer.state.restores,
        rs.WEIGHTS_SHA256: weights_sha256,
        **(stop.fields if stop else {}),
    }
    if chief:
        rs.write_results(run_dir, results)
    checkpointer.finish(completed=stop is None)  # model.keras; a worker's private dir removed
    summaries.flush()
    if verbose:
        print(f"Final weights sha256: {weights_sha256}", flush=True)
        if test_acc:
            print(f"Final test accuracy: {test_acc[-1]:.4f} (best {max(test_acc):.4f}); "
                  f"results in {os.path.join(run_dir, rs.RESULTS_FILE)}", flush=True)
    return results


def _replan(plan: dict, phases: list | None) -> None:
    if phases is not None:
        plan["phases"] = phases


def phase_of(phases: list, epoch: int):
    """The batch phase that contains 0-based `epoch`."""
    return next(p for p in phases if p.start_epoch <= epoch < p.end_epoch)
