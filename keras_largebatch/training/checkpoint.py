"""Exact resume: what a checkpoint holds, where it is written, and how a run comes back.

    checkpointer = Checkpointer(run_dir=..., model=net, optimizer=opt, progress=..., ...)
    position = checkpointer.restore()          # before anything is written: Position(0, 0, 0)
    checkpointer.save(updates)                 # the actions call this (actions/checkpoint.py)

A checkpoint (one `tf.train.Checkpoint`) holds the model (weights and BN statistics), the
optimizer (iterations and slots: momentum, LARS, BA accumulators), `Progress` (epoch, step in
epoch, samples seen: the input position, since each epoch's order is a seeded permutation the
pipeline can re-enter at any step), `RunningMetrics` (the epoch's partial loss/accuracy sums), the
model's Keras RNG state (the `SeedGenerator` variables of Dropout & co.: `model.variables` has them
but a Keras model does not put them in its checkpoint), the train step's own variables
(`TrainStep.grad_scale`, `BAChunkStep`'s per-epoch sums), the LR multiplier of
`on_divergence='restore'`, and `RunState` (JSON: per-epoch history, the LR of the epoch in
progress, the number of roll-backs, the global update count). With `train.deterministic = True` a
resumed run is bitwise identical to an uninterrupted one on CPU (tests/training/test_resume_cli.py).

Numbering: ckpt-<updates>, the global update count (one optimizer update; for BA-Momentum one
chunk of `min_increment` examples, the optimizer then decides when to update).

Atomic (TF 2.21 `CheckpointManager.save`, functional_saver.py / checkpoint_management.py): the data
is written into `ckpt-N_temp/`, renamed to `ckpt-N.data-*`, then `ckpt-N.index` is written; only
then does the manager rewrite the `checkpoint` state file (temporary file + rename) to name
ckpt-N, and only after that delete checkpoints beyond `max_to_keep`. A kill at any moment leaves
the state file naming a complete checkpoint. Numbers are update counts and the loop never saves
one count twice, so a save never overwrites the checkpoint the state file names (a half-written
ckpt-N of a killed process is overwritten when the resumed run reaches update N again). There is
no fsync: this protects against killed processes, not against power loss.

Resume (checkpoint_files.py): the checkpoints are found from the ckpt-N files on disk, newest
first; a damaged one (index missing, a tensor that does not read back) is skipped with one
`warning:` line and the next older one is tried. A checkpoint that reads back but does not fit
this run's model or optimizer is a config mismatch, not damage: a one-line UserInputError.
When checkpoints exist and none reads back the run is refused (UserInputError, nothing
written): it never starts again from update 0 over them without --overwrite. The
CheckpointManager, which deletes checkpoints beyond `max_to_keep`, is created at the first save
from a state file rebuilt to hold only the restored checkpoint and older ones, so a broken newer
checkpoint never causes an intact one to be deleted (it stays until the resumed run overwrites
it at the same update). A full disk during a save raises disk_full.DiskFullError (exit 4) and
removes only the save's own staging folder ckpt-N_temp/.

Multi-worker (TF_CONFIG): every worker saves at the same updates (a save may need collectives);
the chief into <run_dir>/checkpoints, the others into a private temporary directory deleted at
the end. Every worker restores from the chief's directory, so the run_dir must be on storage all
workers see for a resume; workers that restore different checkpoints stop with an error instead
of training a mixed model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_largebatch import files
from keras_largebatch.disk_full import DiskFullError, is_disk_full, naming
from keras_largebatch.errors import UserInputError
from keras_largebatch.training import checkpoint_files as cf
from keras_largebatch.training import run_dir as rundir

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.keras"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands: 0-based epoch, updates done in it, global updates done."""

    epoch: int
    step: int
    updates: int


class RunState(tf.train.experimental.PythonState):
    """Host-side state that a resume needs, stored in the checkpoint as JSON."""

    def __init__(self):
        self.history: list[dict] = []
        self.epoch_lr: float | None = None
        self.restores = 0
        self.updates = 0  # the loop's global update count (BA-Momentum: chunks)
        self.extra: dict = {}  # e.g. GoodputBatch's decisions (training/goodput_control.py)

    def serialize(self) -> str:
        return json.dumps({"history": self.history, "epoch_lr": self.epoch_lr,
                           "restores": self.restores, "updates": self.updates,
                           **({"extra": self.extra} if self.extra else {})})

    def deserialize(self, string_value) -> None:
        data = json.loads(string_value)
        self.history[:] = data["history"]  # in place: the loop holds this list
        self.epoch_lr = data["epoch_lr"]
        self.restores = int(data["restores"])
        self.updates = int(data["updates"])
        self.extra = dict(data.get("extra", {}))


class ModelRNG(tf.Module):
    """The model's variables outside its weights: Keras SeedGenerator states (dropout masks)."""

    def __init__(self, model: keras.Model):
        super().__init__(name="model_rng")
        weights = {id(w) for w in model.weights}
        self.states = [v for v in model.variables if id(v) not in weights]


class StepState(tf.Module):
    """The train step's own variables (e.g. TrainStep.grad_scale, BAChunkStep's epoch sums) and
    those it lists in `state_variables()` (the gradient-noise-scale averages, train_step.py)."""

    def __init__(self, step):
        super().__init__(name="step_state")
        self.states = [v for v in vars(step).values() if isinstance(v, tf.Variable)]
        extra = getattr(step, "state_variables", None)
        if extra is not None and extra():
            self.noise_scale = list(extra())


class _ProgressState(tf.Module):
    """The Progress' five clock variables under their names, as a checkpoint entry.

    `Progress` holds Keras variables (backend-neutral); on TensorFlow they are trackable, so
    this module gives them the same checkpoint keys as when Progress was a `tf.Module`
    (`progress/epoch`, ...). `iteration_origin` (the model.fit link) is not training state.
    """

    def __init__(self, progress):
        super().__init__(name="progress")
        for name in ("epoch", "epoch_index", "step_in_epoch", "steps_per_epoch", "samples_seen"):
            setattr(self, name, getattr(progress, name))


class Checkpointer:
    """Saves and restores every piece of training state listed in the module docstring."""

    def __init__(self, *, run_dir: str, model: keras.Model, optimizer, progress, metrics,
                 strategy: tf.distribute.Strategy, chief: bool, step=None,
                 lr_multiplier: tf.Variable | None = None, keep: int = 2,
                 overwrite: bool = False, verbose: bool = True):
        self.run_dir, self.model, self.progress, self.metrics = run_dir, model, progress, metrics
        self.strategy, self.chief = strategy, chief
        self.overwrite, self.verbose = overwrite, verbose
        self.state = RunState()
        parts = dict(model=model, optimizer=optimizer, progress=_ProgressState(progress),
                     metrics=metrics,
                     rng=ModelRNG(model), run_state=self.state)
        if lr_multiplier is not None:
            parts["lr_multiplier"] = lr_multiplier
        if step is not None:  # grad_scale (seed 003 adaptation), BAChunkStep's epoch sums, ...
            parts["step"] = StepState(step)
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.directory = os.path.join(run_dir, CHECKPOINT_DIR)
        self._private_dir = None if chief else tempfile.mkdtemp(prefix="keras_largebatch-worker-")
        self._keep = keep if chief else 1
        self._manager: tf.train.CheckpointManager | None = None
        self._resumed_from: int | None = None  # checkpoint number restored at start
        self._latest: str | None = None  # prefix of the newest checkpoint saved or restored
        self.last_saved: int | None = None
        # callable(StepOutput) -> Stop | Rewind | None, run before every `save_sound`
        self.save_guard = None

    @property
    def history(self) -> list[dict]:
        """Per-epoch records (restored with the checkpoint; the loop appends to this list)."""
        return self.state.history

    @property
    def manager(self) -> tf.train.CheckpointManager:
        """The CheckpointManager, made at the first save (after run_dir.prepare), from a state
        file that names only intact checkpoints (see the module docstring)."""
        if self._manager is None:
            directory = self._private_dir or self.directory
            if self._resumed_from is not None and not self._private_dir:
                kept = [n for n in cf.numbers(directory) if n <= self._resumed_from]
                with naming(os.path.join(directory, cf.STATE_FILE)):
                    cf.write_state(directory, sorted(kept))
            self._manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                                       max_to_keep=self._keep)
        return self._manager

    # ---- Restore -------------------------------------------------------------------------
    def restore(self) -> Position:
        """Restore the newest intact checkpoint (or initialise); the position to start at."""
        found = [] if self.overwrite else cf.numbers(self.directory)
        if not found:
            self.progress.samples_seen.assign(0)
            self.progress.begin_epoch(0, 1)
            self.metrics.reset()
            self._check_workers_agree(0)
            return Position(0, 0, 0)
        latest, skipped = self._newest_intact(found)
        note = cf.state_note(self.directory, found)
        if note:
            print(f"warning: {note}; resuming from the checkpoint files themselves",
                  file=sys.stderr, flush=True)
        for path, reason in skipped:
            print(f"warning: skipping damaged checkpoint {path} ({reason}); resuming from "
                  f"{latest}", file=sys.stderr, flush=True)
        self.restore_from(latest)
        self._resumed_from = int(latest.rsplit("-", 1)[1])
        position = self.position()
        self._check_workers_agree(position.updates)
        self.last_saved = position.updates
        if self.verbose:
            print(f"Resuming {self.run_dir} at epoch {position.epoch + 1}, step {position.step}, "
                  f"from {latest}", flush=True)
        return position

    def position(self) -> Position:
        """The position the restored state stands at (a finished epoch means the next one)."""
        epoch = int(self.progress.epoch_index.numpy())
        step = int(self.progress.step_in_epoch.numpy())
        if step >= int(self.progress.steps_per_epoch.numpy()):
            epoch, step = epoch + 1, 0
        return Position(epoch, step, self.state.updates)

    def _newest_intact(self, found: list[int]) -> tuple[str, list[tuple[str, str]]]:
        """The newest checkpoint of `found` that reads back, and the (path, reason) of the
        newer ones skipped; UserInputError (nothing written) if none reads back."""
        skipped = []
        for number in found:
            path = cf.prefix(self.directory, number)
            reason = cf.damage(path)
            if reason is None:
                return path, skipped
            skipped.append((path, reason))
        path, reason = skipped[0]
        others = f", nor can the {len(skipped) - 1} older one(s)" if len(skipped) > 1 else ""
        raise UserInputError(
            f"checkpoint {path} cannot be restored into this run ({reason}){others}: "
            f"{'they are' if others else 'it is'} damaged; move {self.directory} away to keep "
            f"them, or pass --overwrite to start afresh")

    def latest(self) -> str | None:
        """The newest checkpoint this run saved or restored (the one to roll back to)."""
        return self._latest or tf.train.latest_checkpoint(self.directory)

    def restore_from(self, path: str) -> None:
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UserInputError(
                f"checkpoint {path} cannot be restored into this run ({first}); it holds another "
                f"model or optimizer (a changed config?): move {self.directory} away, or pass "
                f"--overwrite to start afresh") from None
        self._latest = path

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

    # ---- Save ----------------------------------------------------------------------------
    def save_sound(self, out) -> object | None:
        """Save at `out.updates` unless the save guard objects: then write nothing and return
        its outcome (a `Stop` or `Rewind`, training/actions/). The one rule every save of the
        loop follows: no checkpoint holds a diverged state (the loop installs the divergence
        check as `save_guard`: a finite, bounded loss window and finite weights)."""
        if self.save_guard is not None:
            outcome = self.save_guard(out)
            if outcome is not None:
                return outcome
        self.save(out.updates)
        return None

    def save(self, updates: int) -> bool:
        """Write ckpt-<updates> (and history.json on the chief) unless it exists; True if so."""
        if self.last_saved == updates:
            return False
        self.state.updates = updates
        manager = self.manager
        path = cf.prefix(manager.directory, updates)
        try:
            self._latest = manager.save(checkpoint_number=updates)
        except Exception as e:
            if is_disk_full(e):  # the previous checkpoint is intact; free this save's staging
                shutil.rmtree(path + "_temp", ignore_errors=True)
                raise DiskFullError(path) from e
            raise
        self.last_saved = updates
        if self.chief:
            files.write_json_atomic(os.path.join(self.run_dir, rundir.HISTORY_FILE),
                                     self.history)
        return True

    def begin_epoch(self, position: Position, current_lr) -> float:
        """The LR in force at the epoch's first update (from the checkpoint when resuming)."""
        if position.step == 0 or self.state.epoch_lr is None:
            self.state.epoch_lr = current_lr()
        return self.state.epoch_lr

    # ---- End of the run ------------------------------------------------------------------
    def weights_sha256(self) -> str:
        """A digest of the model's weights (equal on every worker; bitwise resume checks)."""
        digest = hashlib.sha256()
        for v in self.model.weights:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
        return digest.hexdigest()

    def finish(self, *, completed: bool) -> None:
        """Export the final model (chief, completed runs); remove a worker's private dir."""
        if self.chief and completed:
            export_model(self.model, os.path.join(self.run_dir, MODEL_FILE))
        if self._private_dir:
            shutil.rmtree(self._private_dir, ignore_errors=True)


def export_model(model: keras.Model, path: str) -> None:
    """`model.save(path)` via a temporary name, so the file is whole or absent. A full disk
    raises DiskFullError; any other failure is a warning (the weights are in the checkpoint)."""
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - an export failure must not lose a finished run
        if os.path.exists(tmp):
            os.remove(tmp)
        if is_disk_full(e):  # exit 4: rerunning the finished run exports it again
            raise DiskFullError(path) from e
        print(f"warning: could not export {path} ({str(e).splitlines()[0][:120]}); the final "
              f"weights are in the last checkpoint", file=sys.stderr, flush=True)
