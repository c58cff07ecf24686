"""Gradient accumulation: one optimizer update from a per-replica batch too big for memory.

    plan = plan_micro_batches(per_replica_batch=512, max_micro_batch=128)   # host, per phase
    # plan.num_micro_batches == 4, plan.micro_batch_size == 128; UserInputError if unequal

    # inside the replica function of the compiled step:
    result = accumulate_gradients(model, per_example_loss_fn, images, labels,
                                  max_micro_batch=max_per_replica_batch,
                                  optimizer=optimizer)
    optimizer.apply_gradients(zip(result.gradients, model.trainable_variables))

The per-replica batch of b samples is cut into n = ceil(b / max_micro_batch) equal micro-batches
of b / n samples (seed 000 Section 4.3: a batch of 1024 as two passes of 512; seed 004's
`iter_size`). Each micro-batch contributes

    sum_i l(x_i, y_i) / global_batch  +  sum(model.losses) / (n * replicas)

to the loss, and its gradient is added to the running sum, so the result is exactly the gradient
of the un-split step (per-example losses summed and divided by the GLOBAL batch; regularisation
counted once per update and split across replicas as `tf.nn.scale_regularization_loss` would).
The caller then makes ONE optimizer update: `optimizer.iterations` counts updates and the
`Progress` advances once per step, so learning-rate schedules (epoch- or step-keyed) advance per
update, not per micro-batch. Keras 3's built-in `gradient_accumulation_steps` calls the schedule
with its micro-step counter instead (`base_optimizer._get_current_learning_rate` passes
`self._iterations`), so a step-keyed schedule there runs `gradient_accumulation_steps` times too
fast (tests/training/test_accumulation.py shows it).

The micro-batch loop is a `tf.while_loop` whose trip count is a tensor computed from the dynamic
batch size, so one trace serves every batch size and every `max_micro_batch` (pass it as a
tensor or Python int). A batch that does not split into equal micro-batches fails an in-graph
assertion naming the sizes; `plan_micro_batches` gives the same check host-side as a one-line
`UserInputError` at the phase boundary, before anything runs. Batch norm inside the model sees
micro-batches (and updates its moving statistics once per micro-batch): use
`GhostBatchNormalization` to make the BN batch explicit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import keras
import tensorflow as tf

from keras_largebatch.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class MicroBatchPlan:
    num_micro_batches: int
    micro_batch_size: int


def plan_micro_batches(per_replica_batch: int, max_micro_batch: int | None) -> MicroBatchPlan:
    """Host-side: the fewest equal micro-batches of at most `max_micro_batch` samples.

    n = ceil(per_replica_batch / max_micro_batch); raises UserInputError when n does not divide
    the batch, naming the largest valid cap below `max_micro_batch`.
    """
    for name, value in (
        ("per_replica_batch", per_replica_batch),
        ("max_micro_batch", max_micro_batch),
    ):
        if value is None and name == "max_micro_batch":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{name}={value!r} must be a positive integer number of samples")
    if max_micro_batch is None or per_replica_batch <= max_micro_batch:
        return MicroBatchPlan(1, per_replica_batch)
    n = math.ceil(per_replica_batch / max_micro_batch)
    if per_replica_batch % n:
        best = max(d for d in range(1, max_micro_batch + 1) if per_replica_batch % d == 0)
        raise UserInputError(
            f"per-replica batch {per_replica_batch} does not split into {n} equal micro-batches "
            f"of at most max_per_replica_batch={max_micro_batch}; use a cap that divides it "
            f"(e.g. {best}) or a batch size divisible by {n}"
        )
    return MicroBatchPlan(n, per_replica_batch // n)


@dataclasses.dataclass
class AccumulationResult:
    """What one accumulated step produced (all per replica).

    gradients: one entry per `model.trainable_variables` (None where the loss does not depend
        on the variable), the gradient of `loss`.
    loss: sum_i l_i / global_batch + model.losses / replicas (unscaled, even with loss scaling).
    per_example_loss: [b] losses in batch order; predictions: model outputs for the whole batch
        in batch order (for metrics).
    num_micro_batches: scalar int32 tensor.
    micro_sqr_sum: sum over the micro-batches of the squared L2 norm of each micro-batch's
        gradient (as differentiated: loss-scaled); the gradient noise scale's small-batch
        norms (noise_scale_step.py).
    """

    gradients: list
    loss: tf.Tensor
    per_example_loss: tf.Tensor
    predictions: object
    num_micro_batches: tf.Tensor
    micro_sqr_sum: tf.Tensor | None = None


def num_micro_batches(batch_size, max_micro_batch) -> tf.Tensor:
    """In-graph n = ceil(batch / max_micro_batch), at least 1 (max None: 1)."""
    batch = tf.cast(batch_size, tf.int32)
    if max_micro_batch is None:
        return tf.ones([], tf.int32)
    cap = tf.cast(max_micro_batch, tf.int32)
    return tf.maximum((batch + cap - 1) // cap, 1)


def accumulate_gradients(
    model: keras.Model,
    loss_fn: Callable,
    x,
    y,
    *,
    max_micro_batch=None,
    global_batch_size=None,
    optimizer: keras.optimizers.Optimizer | None = None,
    include_model_losses: bool = True,
    training: bool = True,
) -> AccumulationResult:
    """Gradient of the whole per-replica batch (x, y), computed over equal micro-batches.

    Call in replica context (inside `strategy.run`) or without a strategy; graph mode. Build the
    optimizer (`optimizer.build(model.trainable_variables)`) before tracing: slot variables
    created lazily inside the traced step do not mix with the while loop under MirroredStrategy.
    `loss_fn(y_true, y_pred)` returns per-example losses of shape [micro_batch]. `x` and `y` may
    be nested structures of tensors sharing the leading batch dimension. `global_batch_size`
    defaults to b * num_replicas_in_sync. With `optimizer` that has `scale_loss` (loss scaling)
    each micro-batch loss is scaled before differentiation; `apply_gradients` unscales.
    """
    if not model.built:
        raise UserInputError(
            f"model {model.name!r} is not built; call it once (or give it an Input) before "
            "accumulating gradients"
        )
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    first = tf.nest.flatten(x)[0]
    batch = tf.shape(first)[0]
    if global_batch_size is None:
        global_batch_size = batch * replicas
    n = num_micro_batches(batch, max_micro_batch)
    check = tf.debugging.Assert(
        tf.equal(batch % n, 0),
        [
            "gradient accumulation: a per-replica batch of",
            batch,
            "does not split into",
            n,
            "equal micro-batches; choose max_per_replica_batch dividing the per-replica batch",
        ],
    )
    with tf.control_dependencies([check]):
        micro = tf.identity(batch // n)

    variables = model.trainable_variables
    n_float = tf.cast(n, tf.float32)
    none_grads: set[int] = set()  # filled while tracing the body (traced once)

    def micro_loss(xs, ys):
        predictions = model(xs, training=training)
        per_example = tf.cast(loss_fn(ys, predictions), tf.float32)
        loss = tf.reduce_sum(per_example) / tf.cast(global_batch_size, tf.float32)
        if include_model_losses and model.losses:
            reg = tf.add_n([tf.cast(v, tf.float32) for v in model.losses])
            loss += reg / (n_float * replicas)
        return loss, per_example, predictions

    def body(i, grad_acc, loss_acc, sqr_acc, loss_ta, pred_tas):
        start = i * micro
        xs = tf.nest.map_structure(lambda t: t[start : start + micro], x)
        ys = tf.nest.map_structure(lambda t: t[start : start + micro], y)
        with tf.GradientTape() as tape:
            loss, per_example, predictions = micro_loss(xs, ys)
            scaled = loss
            if optimizer is not None and hasattr(optimizer, "scale_loss"):
                scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        new_acc, sqr = [], tf.zeros([], tf.float32)
        for k, (g, acc) in enumerate(zip(grads, grad_acc, strict=True)):
            if g is None:
                none_grads.add(k)
                new_acc.append(acc)
            else:
                g = tf.convert_to_tensor(g)
                new_acc.append(acc + g)
                sqr += tf.reduce_sum(tf.square(tf.cast(g, tf.float32)))
        loss_ta = loss_ta.write(i, per_example)
        pred_tas = [
            ta.write(i, p) for ta, p in zip(pred_tas, tf.nest.flatten(predictions), strict=True)
        ]
        return i + 1, new_acc, loss_acc + loss, sqr_acc + sqr, loss_ta, pred_tas

    output_structure = model.compute_output_spec(_spec_of(x))
    out_spec = tf.nest.flatten(output_structure)
    pred_tas = [
        tf.TensorArray(s.dtype, size=n, infer_shape=False, element_shape=None) for s in out_spec
    ]
    loss_ta = tf.TensorArray(tf.float32, size=n, infer_shape=False)
    grad_acc = [tf.zeros(v.shape, v.dtype) for v in variables]
    _, grads, loss, sqr_sum, loss_ta, pred_tas = tf.while_loop(
        lambda i, *_: i < n,
        body,
        (tf.constant(0, tf.int32), grad_acc, tf.zeros([], tf.float32), tf.zeros([], tf.float32),
         loss_ta, pred_tas),
        parallel_iterations=1,
    )
    grads = [None if k in none_grads else g for k, g in enumerate(grads)]
    per_example_loss = loss_ta.concat()
    flat_preds = []
    for ta, spec in zip(pred_tas, out_spec, strict=True):
        p = ta.concat()
        p.set_shape([None, *spec.shape[1:]])
        flat_preds.append(p)
    predictions = tf.nest.pack_sequence_as(output_structure, flat_preds)
    return AccumulationResult(grads, loss, per_example_loss, predictions, n, sqr_sum)


def _spec_of(x):
    return tf.nest.map_structure(
        lambda t: keras.KerasTensor(shape=(None, *t.shape[1:]), dtype=t.dtype.name), x
    )
