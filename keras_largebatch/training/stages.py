"""The stages of one run, in the order `loop._run` calls them; each fits on a screen.

    built = build_run(config, components, signals, strategy)      # nothing written yet
    opened = open_run_dir(config, built, run_dir=..., ...)         # lock, restore, then write
    actions = make_actions(config, built, opened, signals)        # after every update
    stop = train_epochs(config, built, opened, actions)            # the epochs
    return finish(config, built, opened, stop, run_dir)            # results.json, model.keras

`build_run` and `open_run_dir` raise `UserInputError` for anything wrong (loop.py turns it into
one error line, exit 2) and write nothing before every check has passed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from keras_largebatch.data import DataSource, get_source
from keras_largebatch.data.eval_inputs import eval_dataset_fn
from keras_largebatch.data.validation import hold_out
from keras_largebatch.goodput.adascale import AdaScaled
from keras_largebatch.optimizers.lars_callback import find_lars
from keras_largebatch.schedules.progress import Progress, default_progress
from keras_largebatch.studies import results as rs
from keras_largebatch.training import build, cluster, loop_length
from keras_largebatch.training import run_dir as rundir
from keras_largebatch.training.actions import Action, Stop
from keras_largebatch.training.actions.checkpoint import PeriodicCheckpoint
from keras_largebatch.training.actions.divergence import DivergenceCheck
from keras_largebatch.training.actions.preemption import PreemptionCheckpoint
from keras_largebatch.training.actions.preemption_sync import PreemptionSync
from keras_largebatch.training.actions.step_summaries import StepSummaries
from keras_largebatch.training.checkpoint import Checkpointer, Position
from keras_largebatch.training.components import Components
from keras_largebatch.training.divergence import DivergenceGuard
from keras_largebatch.training.epoch import EpochRunner
from keras_largebatch.training.goodput_control import GoodputControl
from keras_largebatch.training.run_config import RunConfig
from keras_largebatch.training.run_lock import RunDirLock
from keras_largebatch.training.signals import SignalCatcher
from keras_largebatch.training.steps.ba_step import BAChunkStep
from keras_largebatch.training.strategy import collective_timeout_s, is_chief, workers
from keras_largebatch.training.summaries import Summaries


@dataclasses.dataclass
class Built:
    """What `build_run` made: the distributed parts of the run, before any file."""

    guard: DivergenceGuard
    strategy: tf.distribute.Strategy
    source: DataSource
    phases: list
    progress: Progress
    parts: build.Parts
    evaluate: Callable
    test_data: object
    train_data: object
    validation_data: object = None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def multi_worker(self) -> bool:
        return isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)


@dataclasses.dataclass
class Opened:
    """What `open_run_dir` set up: the checkpointer, where training stands, the summaries."""

    chief: bool
    checkpointer: Checkpointer
    position: Position
    summaries: Summaries
    phases: list                       # with an adaptive schedule: as its decisions say
    control: GoodputControl | None     # GoodputBatch's side of the loop, or None
    sync: PreemptionSync | None = None


def build_run(config: RunConfig, components: Components, signals: SignalCatcher,
              strategy: tf.distribute.Strategy | None) -> Built:
    """Checks and seeds; strategy and data; batch phases and LR; model, optimizer, step. (Op
    determinism, train.deterministic, is set around the whole run: loop.op_determinism.)"""
    o, ckpt = config.optimization, config.checkpointing
    guard = DivergenceGuard(on_divergence=ckpt.on_divergence,
                            loss_upper_bound=ckpt.loss_upper_bound,
                            lr_factor=ckpt.divergence_lr_factor, max_restores=ckpt.max_restores)
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or components.make_strategy()
    signals.reclaim()  # MultiWorkerMirroredStrategy's coordination service takes SIGTERM
    replicas = strategy.num_replicas_in_sync
    source = (config.data.dataset if isinstance(config.data.dataset, DataSource)
              else get_source(config.data.dataset, sources=components.sources))
    held_out = None
    if config.data.validation_examples:  # the last N training examples (data/validation.py)
        source, held_out = hold_out(source, config.data.validation_examples)
    phases = build.plan_phases(config, source, replicas)
    learning_rate = build.resolve_learning_rate(
        o.learning_rate, build.batch_schedule_of(config), phases, lr_scaling=o.lr_scaling,
        lr_reference_batch_size=o.lr_reference_batch_size)
    progress = default_progress()
    progress.begin_epoch(0, 1)  # this loop drives the clock (restore sets the real position)
    parts = build.build_parts(config, components, strategy, source, progress,
                              learning_rate=learning_rate, guard=guard)
    if isinstance(learning_rate, AdaScaled):  # AdaScale reads the step's noise statistics
        learning_rate.attach(parts.step.noise_scale.stats)
    batch = config.data.eval_batch_size
    return Built(guard=guard, strategy=strategy, source=source, phases=phases,
                 progress=progress, parts=parts,
                 evaluate=build.evaluate_fn(parts.model, strategy),  # replicas and workers
                 test_data=eval_dataset_fn(source, split="test", batch_size=batch),
                 train_data=(eval_dataset_fn(source, split="train", batch_size=batch)
                             if config.data.eval_train_set else None),
                 validation_data=(None if held_out is None else
                                  eval_dataset_fn(held_out, split="test", batch_size=batch)))


def dry_run_summary(config: RunConfig, built: Built) -> dict:
    parts = built.parts
    return {"status": "dry_run", "dataset": built.source.name, "model": config.optimization.model,
            "parameters": int(parts.model.count_params()),
            "optimizer": type(parts.optimizer).__name__, "replicas": built.replicas,
            "learning_rate": build.current_lr(parts.optimizer),
            "phases": [(p.start_epoch, p.end_epoch, p.batch_size, p.lr_multiplier)
                       for p in built.phases]}


def open_run_dir(config: RunConfig, built: Built, *, run_dir: str, overwrite: bool,
                 config_text: str, operative_config: Callable[[], str] | None,
                 lock: RunDirLock) -> Opened:
    """Check the folder, lock it (chief), restore the newest intact checkpoint, then write."""
    verbose, parts = config.logging.verbose, built.parts
    chief = is_chief()
    rundir.check_target(run_dir, overwrite=overwrite)  # links, home, cwd, a user's own folder
    rundir.check_usable(run_dir)  # writable parent; run files of the right kind
    if chief:  # only the chief writes run_dir; workers may share it over NFS
        lock.acquire()  # "in use by process PID"; creates the folder
    rundir.check_compatible(run_dir, config_text, overwrite=overwrite)
    checkpointer = Checkpointer(
        run_dir=run_dir, model=parts.model, optimizer=parts.optimizer, progress=built.progress,
        metrics=parts.metrics, strategy=built.strategy, chief=chief, step=parts.step,
        lr_multiplier=built.guard.lr_multiplier, keep=config.checkpointing.keep,
        overwrite=overwrite, verbose=verbose)
    position = checkpointer.restore()  # refused (UserInputError) before any write
    schedule, control, phases = build.batch_schedule_of(config), None, built.phases
    if getattr(schedule, "adaptive", False):  # GoodputBatch: decisions from the checkpoint
        control = GoodputControl(schedule, config=config, source=built.source,
                                 replicas=built.replicas, step=parts.step, summaries=None,
                                 verbose=verbose, strategy=built.strategy,
                                 variables=parts.model.trainable_variables)
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
    return Opened(chief=chief, checkpointer=checkpointer, position=position,
                  summaries=summaries, phases=phases, control=control)


def make_actions(config: RunConfig, built: Built, opened: Opened,
                 signals: SignalCatcher) -> list[Action]:
    """The actions after every update (training/actions/), and the checkpointer's save guard."""
    parts, checkpointer = built.parts, opened.checkpointer
    divergence = DivergenceCheck(
        built.guard, checkpointer, metrics=parts.metrics, progress=built.progress,
        variables=[*parts.model.variables, *parts.optimizer.variables],
        log_every_steps=config.logging.every_steps, summaries=opened.summaries)
    # No checkpoint ever holds a diverged state: every save of the loop asks this first.
    checkpointer.save_guard = lambda out: divergence.check(out, before_save=True)
    sync = PreemptionSync(signals, built.strategy) if built.multi_worker else None
    opened.sync = sync  # all workers stop at the same update
    schedule = build.batch_schedule_of(config)
    actions = [
        *([sync] if sync else []),
        StepSummaries(opened.summaries, metrics=parts.metrics, progress=built.progress,
                      current_lr=lambda: build.current_lr(parts.optimizer),
                      batch_size=lambda epoch: schedule.batch_size(float(epoch)),
                      log_every_steps=config.logging.every_steps),
        *config.extra_actions,
        divergence,
        PeriodicCheckpoint(checkpointer, config.checkpointing.every_steps),
        PreemptionCheckpoint(signals, checkpointer, epochs=config.optimization.epochs,
                             received=sync.received if sync else None),
    ]
    if built.guard.mode == "restore" and checkpointer.last_saved is None:
        checkpointer.save(0)  # a checkpoint to roll back to before the first one is due
    return actions


def train_epochs(config: RunConfig, built: Built, opened: Opened, actions: list) -> Stop | None:
    """Epoch by epoch from the restored position, entering each batch phase once; a peer lost
    under MultiWorkerMirroredStrategy becomes `cluster.lost_worker` (exit 5)."""
    verbose, summaries = config.logging.verbose, opened.summaries
    runner = EpochRunner(config=config, strategy=built.strategy, source=built.source,
                         parts=built.parts, progress=built.progress,
                         checkpointer=opened.checkpointer, summaries=summaries,
                         actions=actions, evaluate=built.evaluate, test_data=built.test_data,
                         train_data=built.train_data, validation_data=built.validation_data,
                         lars=find_lars(built.parts.optimizer),
                         steps_per_loop=loop_length.resolve(
                             config.optimization.steps_per_loop, built.parts.step,
                             user_actions=any(getattr(a, "every_update", True)
                                              for a in config.extra_actions),
                             multi_worker=built.multi_worker))
    if opened.control is not None:  # a decision re-plans the phases before the epoch-end save
        runner.epoch_end_hook = lambda epoch: _replan(
            opened, opened.control.after_epoch(epoch, opened.checkpointer.history))
    position, stop, entered = opened.position, None, None
    try:
        while position.epoch < config.optimization.epochs and stop is None:
            epoch = position.epoch
            phase = phase_of(opened.phases, epoch)
            if phase != entered:
                index = opened.phases.index(phase)
                if index and phase.start_epoch >= epoch and verbose:
                    print(f"Phase {index}: global batch {phase.batch_size} from epoch "
                          f"{phase.start_epoch}", flush=True)
                summaries.text("events", f"phase {index}: batch {phase.batch_size}, lr x"
                               f"{phase.lr_multiplier} from epoch {phase.start_epoch}",
                               step=phase.start_epoch)
                entered = phase
            if opened.control is not None:
                opened.control.enter_epoch(epoch)
            position, stop = runner.run(epoch, phase, position)
    except cluster.COLLECTIVE_ERRORS as e:  # a peer died or hung: every worker must restart
        if not built.multi_worker:
            raise
        addresses, index = workers()
        raise cluster.lost_worker(e, workers=addresses, index=index, updates=opened.sync.updates,
                                  checkpoint=opened.checkpointer.latest(),
                                  timeout_s=collective_timeout_s(built.strategy)) from None
    return stop


def finish(config: RunConfig, built: Built, opened: Opened, stop: Stop | None, run_dir: str,
           wall_time_s: float) -> dict:
    """results.json (chief), model.keras, the closing lines; the results dict."""
    checkpointer, o = opened.checkpointer, config.optimization
    history = checkpointer.history
    test_acc = [h[rs.TEST_ACCURACY] for h in history]
    weights_sha256 = checkpointer.weights_sha256()
    results = {
        rs.STATUS: stop.status if stop else rs.COMPLETED,
        "dataset": built.source.name,
        "model": o.model,
        "optimizer": o.optimizer,
        "replicas": built.replicas,
        rs.EPOCHS: history,
        rs.FINAL_TEST_ACCURACY: test_acc[-1] if test_acc else None,
        rs.BEST_TEST_ACCURACY: max(test_acc) if test_acc else None,
        rs.BATCH_SIZE_PER_EPOCH: [h[rs.BATCH_SIZE] for h in history],
        rs.WALL_TIME_S: wall_time_s,
        "trace_count": built.parts.step.trace_count,
        rs.RESTORES: checkpointer.state.restores,
        **rs.validation_choice(history),
        rs.WEIGHTS_SHA256: weights_sha256,
        **(stop.fields if stop else {}),
    }
    if opened.chief:
        rs.write_results(run_dir, results)
    checkpointer.finish(completed=stop is None)  # model.keras; a worker's private dir removed
    opened.summaries.flush()
    if config.logging.verbose:
        print(f"Final weights sha256: {weights_sha256}", flush=True)
        if test_acc:
            print(f"Final test accuracy: {test_acc[-1]:.4f} (best {max(test_acc):.4f}); "
                  f"results in {os.path.join(run_dir, rs.RESULTS_FILE)}", flush=True)
    return results


def _replan(opened: Opened, phases: list | None) -> None:
    if phases is not None:
        opened.phases = phases


def phase_of(phases: list, epoch: int):
    """The batch phase that contains 0-based `epoch`."""
    return next(p for p in phases if p.start_epoch <= epoch < p.end_epoch)

