"""Building a run's parts from its config: batch phases, the learning rate the optimizer sees,
the model, the optimizer, the compiled train step and the evaluation function.

    phases = plan_phases(config, source, replicas)           # checks every phase's batch
    lr = resolve_learning_rate(config.optimization.learning_rate, schedule, phases, ...)
    parts = build_parts(config, components, strategy, source, progress, learning_rate=lr)

Everything here raises `UserInputError` for a bad setting before anything is written.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from keras_largebatch.data import DataSource, check_batch_size, device_data
from keras_largebatch.errors import UserInputError
from keras_largebatch.goodput.adascale import AdaScaled
from keras_largebatch.models import build_model
from keras_largebatch.optimizers.ba_momentum import BAMomentum
from keras_largebatch.schedules import (
    BatchScaled,
    BatchSchedule,
    BatchScheduleMultiplier,
    FixedBatch,
)
from keras_largebatch.training.components import Components
from keras_largebatch.training.inputs import epoch_inputs, release_in_background
from keras_largebatch.training.jit_settings import check_jit_settings
from keras_largebatch.training.metrics import RunningMetrics, masked_example_stats
from keras_largebatch.training.optimizer_factory import create_optimizer
from keras_largebatch.training.precision import float32_outputs, loss_scaled
from keras_largebatch.training.run_config import RunConfig
from keras_largebatch.training.steps.accumulation import plan_micro_batches
from keras_largebatch.training.steps.ba_step import BAChunkStep
from keras_largebatch.training.steps.noise_scale_step import check_noise_scale_batch
from keras_largebatch.training.steps.train_step import TrainStep, per_example_loss_fn


def batch_schedule_of(config: RunConfig) -> BatchSchedule:
    """The user's batch schedule, or a fixed batch of `train.batch_size`."""
    opt = config.optimization
    return opt.batch_schedule if opt.batch_schedule is not None else FixedBatch(opt.batch_size)


def initial_batch_size(config: RunConfig) -> int:
    """The global batch of the first epoch: AdaScale's and the noise-scale average's B0."""
    return batch_schedule_of(config).batch_size(0.0)


def plan_phases(config: RunConfig, source: DataSource, replicas: int) -> list:
    """The batch phases of the run, each checked against the replicas and the dataset."""
    phases = batch_schedule_of(config).phases(config.optimization.epochs)
    for p in phases:
        check_phase_batch(config, source, replicas, p.batch_size)
    return phases


def check_phase_batch(config: RunConfig, source: DataSource, replicas: int, batch: int) -> None:
    """UserInputError unless `batch` is a global batch this run can train with."""
    repeats, cap = config.data.repeats, config.optimization.max_per_replica_batch
    check_batch_size(batch, replicas, source.num_train)
    check_batch_size(batch * repeats, replicas, source.num_train * repeats,
                     what="effective batch (batch_size x repeats)")
    if cap:
        plan_micro_batches(batch * repeats // replicas, cap)
    if config.optimization.noise_scale:
        check_noise_scale_batch(batch // replicas, replicas, repeats)


def resolve_learning_rate(learning_rate, batch_schedule: BatchSchedule, phases: list, *,
                          lr_scaling: str, lr_reference_batch_size: int):
    """The schedule the optimizer sees: base LR x batch scaling rule x batch-phase multiplier.

    `lr_scaling` "adascale" multiplies by AdaScale's gain at the current batch over the first
    epoch's (goodput/adascale.py; the train step's noise-scale statistics are attached to the
    returned `AdaScaled` before the first update). "linear"/"sqrt" makes `learning_rate` the LR
    at `lr_reference_batch_size` (reference 1 + linear = seed 001's base LR eta~ = eta/m). The
    batch schedule's LR multiplier (AdaBatch's decay) is applied unless `learning_rate` already
    composes it.
    """
    schedule = learning_rate
    if lr_scaling not in ("none", "adascale"):
        schedule = BatchScaled(schedule, batch_schedule, lr_reference_batch_size, lr_scaling)
    if not isinstance(learning_rate, BatchScheduleMultiplier) and any(
        p.lr_multiplier != 1.0 for p in phases
    ):
        schedule = BatchScheduleMultiplier(schedule, batch_schedule)
    if lr_scaling == "adascale":  # outermost: the loop attaches the step's statistics to it
        schedule = AdaScaled(schedule, batch_schedule, batch_schedule.batch_size(0.0))
    return schedule


def check_ba_settings(opt: BAMomentum, config: RunConfig) -> None:
    """BA-Momentum feeds chunks of m0 = min_increment: other batch mechanisms do not apply."""
    o = config.optimization
    if o.batch_schedule is not None:
        raise UserInputError("train.batch_schedule cannot be used with optimizer 'ba_momentum'"
                             " (it chooses each batch itself); remove train.batch_schedule")
    if o.batch_size != opt.min_increment:
        raise UserInputError(f"train.batch_size = {o.batch_size} must equal "
                             f"BAMomentum.min_increment = {opt.min_increment} (the chunk size "
                             f"the batch grows by); set both to the same value")
    for name, value, off in (("repeats", config.data.repeats, 1),
                             ("max_per_replica_batch", o.max_per_replica_batch, None),
                             ("adapt_grad_norm_every", o.adapt_grad_norm_every, None),
                             ("gradient_noise_scale", o.gradient_noise_scale or None, None),
                             ("lr_scaling", "adascale" if o.lr_scaling == "adascale" else None,
                              None)):
        if value != off:
            raise UserInputError(f"train.{name} = {value!r} is not supported with optimizer "
                                 f"'ba_momentum'; remove it")


@dataclasses.dataclass
class Parts:
    """What a run trains: model, optimizer, its running metrics, the step and augmentation."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    metrics: RunningMetrics
    step: TrainStep | BAChunkStep
    augment: object

    @property
    def indices_only(self) -> bool:
        """The input pipeline yields index chunks: the step gathers (data/device_data.py)."""
        return getattr(self.step, "device_data", None) is not None


def inputs_on_device(config: RunConfig, source: DataSource, augment, *, ba: bool) -> bool:
    """train.inputs_on_device resolved: True, False or 'auto' (where it applies and fits)."""
    wanted = config.data.inputs_on_device
    if wanted is False:
        return False
    why_not = ("BA-Momentum's chunk step reads whole batches" if ba else
               device_data.why_not_on_device(source, repeats=config.data.repeats,
                                             augment=augment))
    if wanted is True and why_not:
        raise UserInputError(f"train.inputs_on_device = True cannot be used: {why_not}; "
                             f"use 'auto' or False")
    return not why_not and (wanted is True
                            or device_data.normalized_bytes(source) <= device_data.AUTO_MAX_BYTES)


def build_parts(config: RunConfig, components: Components, strategy: tf.distribute.Strategy,
                source: DataSource, progress, *, learning_rate, guard) -> Parts:
    """Model, optimizer and metrics under `strategy.scope()`; the train step for them.

    `guard` (a DivergenceGuard) wraps the learning rate in its roll-back multiplier."""
    o, data = config.optimization, config.data
    with strategy.scope():
        net = float32_outputs(build_model(  # logits and loss in float32 under mixed policies
            o.model, input_shape=source.input_shape, num_classes=source.num_classes,
            builders=components.models, **(o.model_options or {})))
        opt = create_optimizer(o.optimizer, learning_rate=guard.wrap_learning_rate(learning_rate),
                               optimizers=components.optimizers)
        if isinstance(opt, BAMomentum) and o.precision == "mixed_float16":
            raise UserInputError("train.precision = 'mixed_float16' needs loss scaling, which "
                                 "BA-Momentum does not support; use 'mixed_bfloat16'")
        opt = loss_scaled(opt, o.precision)  # LossScaleOptimizer for mixed_float16
        opt.build(net.trainable_variables)
        metrics = RunningMetrics()
    augment = data.augment
    if isinstance(augment, str):  # a policy name (data/augment.py); options are gin bindings
        augment = components.make_augment(augment, input_shape=source.input_shape,
                                          mean=source.mean)
    check_jit_settings(net, opt, jit_compile=o.jit_compile, deterministic=config.deterministic)
    on_device = inputs_on_device(config, source, augment, ba=isinstance(opt, BAMomentum))
    if isinstance(opt, BAMomentum):  # seed 002: the optimizer picks each update's batch
        check_ba_settings(opt, config)
        if opt.dataset_size is None:
            opt.dataset_size = source.num_train
        step = BAChunkStep(model=net, optimizer=opt, strategy=strategy, progress=progress,
                           metrics=metrics)
    else:
        step = TrainStep(model=net, optimizer=opt, strategy=strategy, progress=progress,
                         metrics=metrics, repeats=data.repeats, jit_compile=o.jit_compile,
                         max_per_replica_batch=o.max_per_replica_batch,
                         gradient_norm=config.logging.gradient_norm
                         or bool(o.adapt_grad_norm_every),
                         adapt_grad_norm_every=o.adapt_grad_norm_every,
                         noise_scale_reference_batch=(initial_batch_size(config)
                                                      if o.noise_scale else None),
                         device_data=(device_data.DeviceData.create(source, strategy)
                                      if on_device else None))
    return Parts(model=net, optimizer=opt, metrics=metrics, step=step, augment=augment)


def evaluate_fn(model: keras.Model, strategy: tf.distribute.Strategy | None = None):
    """`evaluate(dataset_fn) -> {"loss", "accuracy"}`: mean over every example, inference mode.

    `dataset_fn` is a `data.eval_dataset_fn(...)`: each replica of each worker evaluates its
    part of the padded set, sums loss / correct / count over the valid rows, and the sums are
    all-reduced (SUM) per batch, so every example counts once and every worker gets the same
    totals (accumulated on the host in float64, as before).
    """
    strategy = strategy or tf.distribute.get_strategy()
    loss_fn = per_example_loss_fn()

    def replica_stats(images, labels, valid):
        logits = model(images, training=False)
        return tf.stack(masked_example_stats(labels, logits, loss_fn(labels, logits), valid))

    @tf.function
    def evaluate_batch(batch):
        per_replica = strategy.run(replica_stats, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def evaluate(dataset_fn) -> dict[str, float]:
        totals = np.zeros(3)
        inputs = epoch_inputs(strategy, dataset_fn)
        for batch in inputs["iterator"]:
            totals += evaluate_batch(batch).numpy().astype(np.float64)
        release_in_background(inputs)  # a distributed iterator's destructor can block
        return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}

    return evaluate


def current_lr(optimizer) -> float:
    """The optimizer's learning rate now (a schedule evaluated at the current progress)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
