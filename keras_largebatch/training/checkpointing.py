"""Exact resume: what a checkpoint holds, when it is written, and how a run comes back.

    keeper = RunKeeper(run_dir=..., model=net, optimizer=opt, progress=..., metrics=..., ...)
    start_epoch, skip_steps = keeper.restore()      # before anything is written
    ...
    action = keeper.after_update(updates, epoch=e, step=i, steps=n)   # after every update
    keeper.end_epoch(updates, epoch=e)                                  # after evaluation

A checkpoint (one `tf.train.Checkpoint`) holds the model (weights and BN statistics), the
optimizer (iterations and slots: momentum, LARS, BA accumulators), `Progress` (epoch, step in
epoch, samples seen: the input position, since each epoch's order is a seeded permutation the
pipeline can re-enter at any step), `RunningMetrics` (the epoch's partial loss/accuracy sums), the
model's Keras RNG state (the `SeedGenerator` variables of Dropout & co.: `model.variables` has them
but a Keras model does not put them in its checkpoint), the train step's own variables
(`TrainStep.grad_scale`, `BAChunkStep`'s per-epoch sums), the LR multiplier of
`on_divergence='restore'`, and `RunState` (JSON: per-epoch history, the LR of the epoch in
progress, the number of roll-backs, the global step count). With `train.deterministic = True` a
resumed run is bitwise identical to an uninterrupted one on CPU (tests/training/test_resume_cli.py).

When: every `every_steps` global steps (never at an epoch's last step) and at every epoch's end;
numbered by the global step count (ckpt-<steps>). A global step is one optimizer update, or for
BA-Momentum one chunk of `min_increment` examples (the optimizer then decides when to update).
Also at the step boundary after a SIGTERM/SIGINT (interrupt.py). Never with non-finite values
(divergence.py checks first).

Atomic (TF 2.21 `CheckpointManager.save`, functional_saver.py / checkpoint_management.py): the data
is written into `ckpt-N_temp/`, renamed to `ckpt-N.data-*`, then `ckpt-N.index` is written; only
then does the manager rewrite the `checkpoint` state file (temporary file + rename) to name
ckpt-N, and only after that delete checkpoints beyond `max_to_keep`. A kill at any moment leaves
the state file naming a complete checkpoint. Numbers are step counts and the loop never saves
one count twice, so a save never overwrites the checkpoint the state file names (a half-written
ckpt-N of a killed process is overwritten when the resumed run reaches update N again). There is
no fsync: this protects against killed processes, not against power loss.

Multi-worker (TF_CONFIG): every worker saves at the same updates (a save may need collectives);
the chief into <run_dir>/checkpoints, the others into a private temporary directory deleted at
the end. Every worker restores from the chief's directory, so the run_dir must be on storage all
workers see for a resume; workers that restore different checkpoints stop with an error instead
of training a mixed model.

Test-only environment hooks (the resume tests drive the real CLI):
    KERAS_LARGEBATCH_TEST_KILL_AT_STEP=N        SIGKILL right after global update N
    KERAS_LARGEBATCH_TEST_KILL_IN_SAVE=N        while saving ckpt-N: after TF wrote the files and
                                                before the state file names them, truncate them
                                                to half and SIGKILL (a kill mid-write)
    KERAS_LARGEBATCH_TEST_SIGNAL_AT_STEP=N:SIG  send this process signal SIG after update N
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.training import interrupt
from keras_largebatch.training import run_dir as rundir
from keras_largebatch.training.divergence import DivergenceGuard

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.keras"
STOP, ROLLBACK = "stop", "rollback"


class RunState(tf.train.experimental.PythonState):
    """Host-side state that a resume needs, stored in the checkpoint as JSON."""

    def __init__(self):
        self.history: list[dict] = []
        self.epoch_lr: float | None = None
        self.restores = 0
        self.updates = 0  # the loop's global step count (updates; BA-Momentum: chunks)

    def serialize(self) -> str:
        return json.dumps({"history": self.history, "epoch_lr": self.epoch_lr,
                           "restores": self.restores, "updates": self.updates})

    def deserialize(self, string_value) -> None:
        data = json.loads(string_value)
        self.history[:] = data["history"]  # in place: the loop holds this list
        self.epoch_lr = data["epoch_lr"]
        self.restores = int(data["restores"])
        self.updates = int(data["updates"])


class ModelRNG(tf.Module):
    """The model's variables outside its weights: Keras SeedGenerator states (dropout masks)."""

    def __init__(self, model: keras.Model):
        super().__init__(name="model_rng")
        weights = {id(w) for w in model.weights}
        self.states = [v for v in model.variables if id(v) not in weights]


class StepState(tf.Module):
    """The train step's own variables (e.g. TrainStep.grad_scale, BAChunkStep's epoch sums)."""

    def __init__(self, step):
        super().__init__(name="step_state")
        self.states = [v for v in vars(step).values() if isinstance(v, tf.Variable)]


def check_every_steps(every_steps) -> None:
    if every_steps is None:
        return
    if (isinstance(every_steps, bool) or not isinstance(every_steps, (int, np.integer))
            or every_steps < 0):
        raise UserInputError(f"train.checkpoint_every_steps must be an integer >= 0 (0 or None: "
                             f"only at epoch ends); got {every_steps!r}")


def _env_int(name: str) -> int:
    return int(os.environ.get(name, "0") or 0)


class RunKeeper:
    """Checkpoints, resume, divergence handling and graceful stop for the training loop."""

    def __init__(self, *, run_dir: str, model: keras.Model, optimizer, progress, metrics,
                 guard: DivergenceGuard, strategy: tf.distribute.Strategy, chief: bool,
                 step=None,
                 epochs: int, every_steps: int | None, log_every_steps: int, keep: int,
                 overwrite: bool, verbose: bool):
        self.run_dir, self.model, self.optimizer = run_dir, model, optimizer
        self.progress, self.metrics, self.guard = progress, metrics, guard
        self.strategy, self.chief, self.epochs = strategy, chief, epochs
        self.every_steps = int(every_steps or 0)
        self.log_every_steps = max(1, int(log_every_steps))
        self.overwrite, self.verbose = overwrite, verbose
        self.state = RunState()
        self.history = self.state.history
        parts = dict(model=model, optimizer=optimizer, progress=progress, metrics=metrics,
                     rng=ModelRNG(model), run_state=self.state)
        if guard.lr_multiplier is not None:
            parts["lr_multiplier"] = guard.lr_multiplier
        if step is not None:  # grad_scale (seed 003 adaptation), BAChunkStep's epoch sums, ...
            parts["step"] = StepState(step)
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.directory = os.path.join(run_dir, CHECKPOINT_DIR)
        self._private_dir = None if chief else tempfile.mkdtemp(prefix="keras_largebatch-worker-")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._private_dir or self.directory, max_to_keep=keep if chief else 1)
        self._finite = guard.finite_check([*model.variables, *optimizer.variables])
        self.summaries = None
        self.status = "completed"
        self.divergence: dict | None = None
        self.interrupted_by: str | None = None
        self.updates = 0  # global step to continue from (restored)
        self.resume_update = self.resume_step = 0
        self.weights_sha256: str | None = None
        self._last_saved: int | None = None
        self._kill_at = _env_int("KERAS_LARGEBATCH_TEST_KILL_AT_STEP")
        self._kill_in_save = _env_int("KERAS_LARGEBATCH_TEST_KILL_IN_SAVE")
        at, _, name = os.environ.get("KERAS_LARGEBATCH_TEST_SIGNAL_AT_STEP", "").partition(":")
        self._signal_at = (int(at), signal.Signals[name or "SIGTERM"]) if at else None

    @property
    def stopped(self) -> bool:
        return self.status != "completed"

    # ---- Restore -------------------------------------------------------------------------
    def restore(self) -> tuple[int, int]:
        """Restore the latest checkpoint (or initialise); return (epoch, step) to start at."""
        latest = None if self.overwrite else tf.train.latest_checkpoint(self.directory)
        if latest is None:
            self.progress.samples_seen.assign(0)
            self.progress.begin_epoch(0, 1)
            self.metrics.reset()
            self._check_workers_agree(0)
            return 0, 0
        self._restore_from(latest)
        epoch = int(self.progress.epoch_index.numpy())
        step = int(self.progress.step_in_epoch.numpy())
        if step >= int(self.progress.steps_per_epoch.numpy()):
            epoch, step = epoch + 1, 0
        updates = self.updates = self.state.updates
        self._check_workers_agree(updates)
        self._last_saved = updates
        if self.verbose:
            print(f"Resuming {self.run_dir} at epoch {epoch + 1}, step {step}, from {latest}",
                  flush=True)
        return epoch, step

    def start(self, summaries) -> None:
        """After the run dir exists: in restore mode, save a checkpoint to roll back to."""
        self.summaries = summaries
        if self.guard.mode == "restore" and self._last_saved is None:
            self._save(0)

    def _restore_from(self, path: str) -> None:
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UserInputError(
                f"checkpoint {path} cannot be restored into this run ({first}); it is damaged or "
                f"holds another model or optimizer: move {self.directory} away, or pass "
                f"--overwrite to start afresh") from None

    def _check_workers_agree(self, updates: int) -> None:
        """Multi-worker: every worker must have restored the same update count."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return
        strategy, value = self.strategy, float(updates)

        @tf.function
        def total():
            local = strategy.run(lambda: tf.constant(value, tf.float64))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None)

        if float(total()) != value * strategy.num_replicas_in_sync:
            raise UserInputError(
                f"workers restored different checkpoints (this one: update {updates} from "
                f"{self.directory}); put --run_dir on storage all workers share, or pass "
                f"--overwrite to all of them to start afresh")

    # ---- During training -----------------------------------------------------------------
    def begin_epoch(self, skip: int, current_lr) -> float:
        """The LR in force at the epoch's first update (from the checkpoint when resuming)."""
        if skip == 0 or self.state.epoch_lr is None:
            self.state.epoch_lr = current_lr()
        self.guard.rebase(self.metrics)
        return self.state.epoch_lr

    def after_update(self, updates: int, *, epoch: int, step: int, steps: int) -> str | None:
        """Hooks after global update `updates` (step `step` of `steps` in 0-based `epoch`).

        Returns None to go on, STOP, or ROLLBACK (then `resume_update` / `resume_step` say
        where the restored checkpoint stands, and the epoch's iterator must be rebuilt).
        """
        self._test_hooks(updates)
        last = step >= steps
        save_due = self.every_steps > 0 and updates % self.every_steps == 0 and not last
        signum = interrupt.requested()
        stop_now = signum is not None and not last  # on the last step the epoch end saves
        if save_due or stop_now or last or updates % self.log_every_steps == 0:
            reason = self.guard.check(self.metrics)
            if reason is None and (save_due or stop_now or last) and not self._finite():
                reason = "non-finite weights or optimizer state"
            if reason is not None:
                return self._diverged(reason, updates, epoch=epoch, step=step, steps=steps)
        if (save_due or stop_now) and self._last_saved != updates:
            self._save(updates)
        if stop_now:
            self._interrupted(signum, epoch, step)
            return STOP
        return None

    def end_epoch(self, updates: int, *, epoch: int) -> None:
        """After the epoch's evaluation and history record: checkpoint; honour a pending signal."""
        if self._last_saved != updates:
            self._save(updates)
        signum = interrupt.requested()
        if signum is not None and epoch + 1 < self.epochs:
            self._interrupted(signum, epoch + 1, 0)

    def _save(self, updates: int) -> None:
        options = None
        if self._kill_in_save and updates == self._kill_in_save:
            options = tf.train.CheckpointOptions(experimental_write_callbacks=[_truncate_and_kill])
        self.state.updates = updates
        self.manager.save(checkpoint_number=updates, options=options)
        self._last_saved = updates
        if self.chief:
            rundir.write_json_atomic(os.path.join(self.run_dir, rundir.HISTORY_FILE),
                                     self.history)

    def _test_hooks(self, updates: int) -> None:
        if self._kill_at and updates == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self._signal_at and updates == self._signal_at[0]:
            os.kill(os.getpid(), self._signal_at[1])

    def _diverged(self, reason: str, updates: int, *, epoch: int, step: int,
                  steps: int) -> str:
        where = f"epoch {epoch + 1}, step {step} (update {updates})"
        guard, restores = self.guard, self.state.restores
        if guard.mode == "restore" and restores < guard.max_restores:
            multiplier = float(guard.lr_multiplier.numpy()) * guard.lr_factor
            latest = tf.train.latest_checkpoint(self.directory)
            self._restore_from(latest)
            self.state.restores = restores + 1
            guard.lr_multiplier.assign(multiplier)
            if int(self.progress.epoch_index.numpy()) != epoch:  # see the invariant above
                raise RuntimeError(f"{latest} is not in epoch {epoch + 1}; cannot roll back")
            self.resume_step = int(self.progress.step_in_epoch.numpy())
            self.resume_update = self.state.updates
            self.progress.begin_epoch(epoch, steps, self.resume_step)
            if self.resume_step == 0:
                self.metrics.reset()
            message = (f"training diverged at {where}: {reason}; rolled back to {latest} "
                       f"(step {self.resume_step}) with the learning rate x{multiplier:g} "
                       f"(restore {restores + 1} of {guard.max_restores})")
            print(f"warning: {message}", file=sys.stderr, flush=True)
            if self.summaries is not None:
                self.summaries.text("events", message, step=epoch + 1)
            return ROLLBACK
        self.status = "diverged"
        self.divergence = {"epoch": epoch + 1, "step": step, "update": updates,
                           "reason": reason, "restores": restores}
        fix = ("train.max_restores exhausted; lower train.learning_rate" if guard.mode == "restore"
               else "lower train.learning_rate or set train.on_divergence = 'restore'")
        print(f"error: training diverged at {where}: {reason}; {fix}", file=sys.stderr,
              flush=True)
        if self.summaries is not None:
            self.summaries.text("events", f"diverged at {where}: {reason}", step=epoch + 1)
        return STOP

    def _interrupted(self, signum: int, epoch: int, step: int) -> None:
        self.status = "interrupted"
        self.interrupted_by = signal.Signals(signum).name
        print(f"interrupted by {self.interrupted_by} at epoch {epoch + 1}, step {step}; saved "
              f"{self.manager.latest_checkpoint}; rerun the same command to resume",
              file=sys.stderr, flush=True)

    # ---- End of the run ------------------------------------------------------------------
    def results_fields(self) -> dict:
        """Extra results.json fields: status details and a digest of the final weights."""
        digest = hashlib.sha256()
        for v in self.model.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
        self.weights_sha256 = digest.hexdigest()
        fields = {"restores": self.state.restores, "weights_sha256": self.weights_sha256}
        if self.divergence is not None:
            fields["divergence"] = self.divergence
            fields["diverged_epoch"] = self.divergence["epoch"]
        if self.interrupted_by is not None:
            fields["interrupted_by"] = self.interrupted_by
            fields["interrupted_by_signal"] = int(signal.Signals[self.interrupted_by])
        return fields

    def finish(self) -> None:
        """Export the final model (chief, completed runs) and remove a worker's private dir.

        Every worker prints the digest of its final weights (equal on all workers)."""
        if self.chief and self.status == "completed":
            export_model(self.model, os.path.join(self.run_dir, MODEL_FILE))
        if self.verbose and self.weights_sha256:
            print(f"Final weights sha256: {self.weights_sha256}", flush=True)
        if self._private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)


def export_model(model: keras.Model, path: str) -> None:
    """`model.save(path)` via a temporary name, so the file is whole or absent."""
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - an export failure must not lose a finished run
        print(f"warning: could not export {path} ({str(e).splitlines()[0][:120]}); the final "
              f"weights are in the last checkpoint", file=sys.stderr, flush=True)


def _truncate_and_kill(save_path) -> None:
    """Test hook: leave ckpt-N half written, as a kill during TF's write would, and die."""
    for f in glob.glob(f"{save_path}.*"):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
