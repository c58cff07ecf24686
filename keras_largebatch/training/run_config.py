"""A run's settings as a few typed, validated groups, and `train()`'s flat names for them.

    config = RunConfig.from_train_args(epochs=8, batch_size=128, ...)   # what train() does
    config.optimization.batch_size, config.checkpointing.every_steps, ...

Users bind the flat names (`train.epochs = 8`, `train.checkpoint_every_steps = 1000`: the API of
every gin file and the README); `train()` groups them here, every value is checked before
anything is built or written (one `error:` line naming the binding and the fix), and the loop
reads only these objects. Units: epochs are epochs, batch sizes are global samples per update
(all replicas), `*_steps` are updates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules.batch import BatchSchedule
from keras_largebatch.schedules.scaling import RULES as LR_SCALING_RULES
from keras_largebatch.training.precision import PRECISIONS

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule
# The most epochs a run may ask for: the batch schedule's phases are found epoch by epoch
# (schedules/batch.py), so an astronomically large `train.epochs` (a typo, 10**22) would hang
# before the first update instead of failing; a million is far beyond any real schedule.
MAX_EPOCHS = 1_000_000


def _positive_int(name: str, value) -> int:
    """`value` as an int if it is a whole number > 0 (validate.is_whole: 2.0 is fine)."""
    if not validate.is_whole(value) or value <= 0:
        raise UserInputError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _optional_whole(name: str, value, minimum: int) -> int | None:
    if value is None:
        return None
    if not validate.is_int(value) or value < minimum:
        raise UserInputError(f"{name} must be an integer >= {minimum} or None; got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What is read and how: dataset, augmentation, seed-003 repeats, evaluation batches."""

    dataset: Any = "fashion_mnist"       # a registered name (data/sources.py) or a DataSource
    augment: str | Callable | None = None
    repeats: int = 1                     # M augmented copies of every sample per update
    eval_batch_size: int = 1000          # samples
    eval_train_set: bool = False         # also evaluate the whole training set every epoch

    def __post_init__(self):
        if not validate.is_int(self.repeats) or self.repeats < 1:
            raise UserInputError(f"train.repeats must be an integer >= 1; got {self.repeats!r}")
        _positive_int("train.eval_batch_size", self.eval_batch_size)
        if not (self.augment is None or isinstance(self.augment, str) or callable(self.augment)):
            raise UserInputError(f"train.augment must be a policy name ('standard', 'cutout', "
                                 f"'inception'), a callable or None; got {self.augment!r}")
        validate.boolean("train.eval_train_set", self.eval_train_set)


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """The model, the optimizer and the schedules of batch size and learning rate."""

    model: str = "cnn_fashion"
    model_options: dict | None = None
    optimizer: str = "momentum"
    learning_rate: LearningRate = 0.05
    batch_size: int = 128                # global samples per update
    batch_schedule: Any = None           # a BatchSchedule (AdaBatch, ...) or None
    epochs: int = 8
    lr_scaling: str = "none"             # "linear" | "sqrt" | "adascale" | "none"
    lr_reference_batch_size: int = 1
    max_per_replica_batch: int | None = None   # above it: gradient accumulation
    adapt_grad_norm_every: int | None = None   # seed-003 authors' gradient-norm adaptation
    jit_compile: bool = False
    precision: str = "float32"           # Keras dtype policy: "mixed_bfloat16" | "mixed_float16"
    gradient_noise_scale: bool | None = None   # measure |G|^2, tr(Sigma); None: where needed

    def __post_init__(self):
        if _positive_int("train.epochs", self.epochs) > MAX_EPOCHS:
            raise UserInputError(f"train.epochs={self.epochs!r} is more than {MAX_EPOCHS:,} "
                                 f"epochs; give the number of passes over the training set")
        _positive_int("train.batch_size", self.batch_size)
        if not isinstance(self.learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            if not validate.is_real(self.learning_rate) or not self.learning_rate > 0 or (
                    self.learning_rate == float("inf")):
                raise UserInputError(f"train.learning_rate must be a positive float; got "
                                     f"{self.learning_rate!r}")
        if self.model_options is not None and not isinstance(self.model_options, dict):
            raise UserInputError(f"train.model_options must be a dict or None; got "
                                 f"{self.model_options!r}")
        if self.batch_schedule is not None and not isinstance(self.batch_schedule,
                                                              BatchSchedule):
            raise UserInputError(f"train.batch_schedule must be a batch schedule such as "
                                 f"@AdaBatch() or None; got {self.batch_schedule!r}")
        validate.one_of("train.lr_scaling", self.lr_scaling, (*LR_SCALING_RULES, "adascale"))
        if self.gradient_noise_scale is not None:
            validate.boolean("train.gradient_noise_scale", self.gradient_noise_scale)
        if self.gradient_noise_scale is False and self.measures_noise_scale:
            raise UserInputError("train.gradient_noise_scale = False, but train.lr_scaling = "
                                 "'adascale' and GoodputBatch need it; drop the binding")
        _positive_int("train.lr_reference_batch_size", self.lr_reference_batch_size)
        _optional_whole("train.max_per_replica_batch", self.max_per_replica_batch, 1)
        _optional_whole("train.adapt_grad_norm_every", self.adapt_grad_norm_every, 1)
        validate.boolean("train.jit_compile", self.jit_compile)
        validate.one_of("train.precision", self.precision, PRECISIONS)

    @property
    def measures_noise_scale(self) -> bool:
        """Whether the run needs the gradient noise scale (AdaScale, a goodput schedule)."""
        return self.lr_scaling == "adascale" or getattr(self.batch_schedule, "adaptive", False)

    @property
    def noise_scale(self) -> bool:
        """train.gradient_noise_scale, with None resolved (on where needed)."""
        if self.gradient_noise_scale is None:
            return self.measures_noise_scale
        return self.gradient_noise_scale


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to checkpoint and what to do when training diverges (training/divergence.py)."""

    every_steps: int | None = 1000       # updates; 0 or None: only at epoch ends
    keep: int = 2                        # checkpoints kept
    on_divergence: str = "stop"          # "stop" | "restore"
    loss_upper_bound: float | None = None
    divergence_lr_factor: float = 0.5
    max_restores: int = 3

    def __post_init__(self):
        if self.every_steps is not None and (not validate.is_int(self.every_steps)
                                             or self.every_steps < 0):
            raise UserInputError(f"train.checkpoint_every_steps must be an integer >= 0 (0 or "
                                 f"None: only at epoch ends); got {self.every_steps!r}")
        if not validate.is_int(self.keep) or self.keep < 1:
            raise UserInputError(f"train.checkpoints_to_keep must be an integer >= 1; got "
                                 f"{self.keep!r}")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """What the run prints and writes to TensorBoard besides the per-epoch scalars."""

    every_steps: int = 50                # step/* scalars and the divergence check, in updates
    gradient_norm: bool = False          # train/gradient_norm per epoch
    verbose: bool = True

    def __post_init__(self):
        if not validate.is_int(self.every_steps) or self.every_steps < 1:
            raise UserInputError(f"train.log_every_steps must be an integer >= 1; got "
                                 f"{self.every_steps!r}")
        validate.boolean("train.log_gradient_norm", self.gradient_norm)
        validate.boolean("verbose", self.verbose)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    optimization: OptimizationConfig
    checkpointing: CheckpointConfig
    logging: LoggingConfig
    seed: int = 0                        # data order, initialisation, augmentation, dropout
    deterministic: bool = False          # TF op determinism: bitwise-reproducible runs on CPU
    extra_actions: Sequence = ()         # user actions run after every update (actions/)

    def __post_init__(self):
        if not validate.is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise UserInputError(f"train.seed must be an integer in [0, 2**32); got "
                                 f"{self.seed!r}")
        validate.boolean("train.deterministic", self.deterministic)

    @classmethod
    def from_train_args(cls, *, dataset, model, model_options, optimizer, learning_rate,
                        batch_size, batch_schedule, epochs, seed, repeats, augment,
                        log_gradient_norm, adapt_grad_norm_every, max_per_replica_batch,
                        lr_scaling, lr_reference_batch_size, jit_compile, eval_batch_size,
                        eval_train_set, log_every_steps, checkpoints_to_keep,
                        checkpoint_every_steps, deterministic, on_divergence, loss_upper_bound,
                        divergence_lr_factor, max_restores, verbose,
                        extra_actions=(), precision="float32",
                        gradient_noise_scale=None) -> RunConfig:
        """Group `train()`'s flat keyword arguments (the gin binding names)."""
        return cls(
            data=DataConfig(dataset=dataset, augment=augment, repeats=repeats,
                            eval_batch_size=eval_batch_size, eval_train_set=eval_train_set),
            optimization=OptimizationConfig(
                model=model, model_options=model_options, optimizer=optimizer,
                learning_rate=learning_rate, batch_size=batch_size,
                batch_schedule=batch_schedule, epochs=epochs, lr_scaling=lr_scaling,
                lr_reference_batch_size=lr_reference_batch_size,
                max_per_replica_batch=max_per_replica_batch,
                adapt_grad_norm_every=adapt_grad_norm_every, jit_compile=jit_compile,
                precision=precision, gradient_noise_scale=gradient_noise_scale),
            checkpointing=CheckpointConfig(
                every_steps=checkpoint_every_steps, keep=checkpoints_to_keep,
                on_divergence=on_divergence, loss_upper_bound=loss_upper_bound,
                divergence_lr_factor=divergence_lr_factor, max_restores=max_restores),
            logging=LoggingConfig(every_steps=log_every_steps, gradient_norm=log_gradient_norm,
                                  verbose=verbose),
            seed=seed, deterministic=deterministic, extra_actions=tuple(extra_actions or ()))
