"""The framework's training loop, read top-down: `train(run_dir=..., epochs=..., ...)`.

    python -m keras_largebatch.main --gin_file=gin/experiments/<x>.gin --run_dir=runs/x

`train()` takes the flat names users bind (`train.epochs`, `train.batch_size`, ...), groups and
checks them (run_config.py) and calls `run()`, which runs the stages of training/stages.py:
`build_run` (checks and seeds, strategy and data, batch phases and learning rate, model,
optimizer, train step) -> `open_run_dir` (lock, restore, then the first write) ->
`make_actions` -> `train_epochs` -> `finish` (results.json, model.keras).

Progress is counted in epochs, not steps: every schedule reads the fractional epoch in
`Progress` (schedules/progress.py), because steps per epoch change whenever the batch size does.
A new batch phase therefore only means a new input pipeline; the compiled step is reused
(steps/train_step.py). Nothing is written before every check has passed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from keras_largebatch.errors import as_user_error
from keras_largebatch.training import stages
from keras_largebatch.training.components import Components
from keras_largebatch.training.precision import precision_policy
from keras_largebatch.training.run_config import RunConfig, with_setting_parameters
from keras_largebatch.training.run_lock import RunDirLock
from keras_largebatch.training.signals import SignalCatcher


@with_setting_parameters
def train(*, run_dir: str, verbose: bool = True, extra_actions: Sequence = (),
          overwrite: bool = False, config_text: str = "",
          operative_config: Callable[[], str] | None = None,
          strategy: tf.distribute.Strategy | None = None, components: Components | None = None,
          signals: SignalCatcher | None = None, dry_run: bool = False, **settings) -> dict:
    """Train as the settings say; write TensorBoard, checkpoints and results.json to run_dir.

        train(run_dir="runs/x", epochs=2, batch_size=256, checkpoint_every_steps=500)

    The settings are keyword arguments named as users bind them (`train.epochs = 2`). Each is
    declared once, with its default, check and one-line doc, in run_config.py (`SETTINGS`; the
    table in docs/SETTINGS.md), and this signature is generated from that declaration
    (`with_setting_parameters`): `inspect.signature(train)` and gin see every setting as a
    keyword parameter with its default; an unknown name is a TypeError here and a gin error in
    a config. `verbose` and `extra_actions` (user actions run after every update,
    training/actions/) are settings named here for Python callers. Returns the results dict;
    `dry_run` validates and builds everything (data, phases, model, optimizer, schedules),
    writes nothing and returns a summary.

    Checkpoints every `checkpoint_every_steps` updates and every epoch; rerunning resumes
    exactly (bitwise with `deterministic`, see checkpoint.py). A non-finite loss, or one
    above `loss_upper_bound`, stops the run or (`on_divergence="restore"`) rolls back to the
    last checkpoint with the LR x `divergence_lr_factor`, at most `max_restores` times
    (divergence.py). `signals` (main.py installs one) turns SIGTERM/SIGINT into a checkpoint
    and a clean stop. `overwrite` removes run_dir's previous run and starts afresh
    (run_dir.py); `config_text` and `operative_config` (main's gin text) are saved with the
    run; `strategy` and `components` replace the default strategy and factories.
    """
    config = RunConfig.from_train_args(verbose=verbose, extra_actions=extra_actions, **settings)
    return run(config, run_dir=run_dir, overwrite=overwrite, config_text=config_text,
               operative_config=operative_config, strategy=strategy,
               components=components or Components(), signals=signals or SignalCatcher(),
               dry_run=dry_run)


def run(config: RunConfig, *, run_dir: str, components: Components, signals: SignalCatcher,
        overwrite: bool = False, config_text: str = "",
        operative_config: Callable[[], str] | None = None,
        strategy: tf.distribute.Strategy | None = None, dry_run: bool = False) -> dict:
    """Train as `config` says (see `train`) under its dtype policy; returns the results dict.
    The run dir's lock (run_lock.py), taken once every check has passed, is released, and the
    previous dtype policy and TensorFlow op determinism restored, when this returns: a run
    started in a notebook or a test leaves the process as it found it."""
    lock = RunDirLock(run_dir)
    try:
        with precision_policy(config.optimization.precision), op_determinism(
                config.deterministic):
            return _run(config, run_dir=run_dir, components=components, signals=signals,
                        overwrite=overwrite, config_text=config_text,
                        operative_config=operative_config, strategy=strategy,
                        dry_run=dry_run, lock=lock)
    finally:
        lock.release()


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """TensorFlow op determinism on for the block when `enabled` (train.deterministic), then as
    it was (it is process-wide: Keras also turns XLA off while it is on)."""
    before = tf_config.is_op_determinism_enabled()
    if enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if tf_config.is_op_determinism_enabled() != before:
            (tf_config.enable_op_determinism if before
             else tf_config.disable_op_determinism)()


def _run(config: RunConfig, *, run_dir: str, components: Components, signals: SignalCatcher,
         overwrite: bool, config_text: str, operative_config: Callable[[], str] | None,
         strategy: tf.distribute.Strategy | None, dry_run: bool, lock: RunDirLock) -> dict:
    """The run's stages (training/stages.py), each one screen."""
    # Everything before the first update: any failure is one error line, exit 2 (errors.py)
    with as_user_error("setting up the run"):
        built = stages.build_run(config, components, signals, strategy)
        if dry_run:
            return stages.dry_run_summary(config, built)
        opened = stages.open_run_dir(config, built, run_dir=run_dir, overwrite=overwrite,
                                     config_text=config_text,
                                     operative_config=operative_config, lock=lock)
        actions = stages.make_actions(config, built, opened, signals)
    wall_start = time.perf_counter()
    stop = stages.train_epochs(config, built, opened, actions)
    return stages.finish(config, built, opened, stop, run_dir,
                         wall_time_s=time.perf_counter() - wall_start)

