"""`BAModel.train_step` on the JAX backend: one chunk of BA-Momentum as a stateless Keras step.

Keras' JAX trainer jits `train_step(self, state, data) -> (logs, state)` with
state = (trainable, non_trainable, optimizer, metrics variables' arrays) (keras
backend/jax/trainer.py). `BATrainStep.train_step` sends JAX calls here:

    stats, non_trainable = chunk_statistics(mode, model, loss_fn, trainable, non_trainable, x, y)
    with StatelessScope(optimizer variables -> optimizer state, trainable -> trainable state):
        out = accumulate_and_apply(optimizer, stats)     # Algorithm 1, masked by jnp.where
    with StatelessScope(metrics variables -> metrics state):
        loss tracker, compiled metrics, BA metrics (batch_size_per_update, updates, m*, ...)
    return logs, (new trainable, non_trainable, optimizer, metrics arrays)

The per-example statistics are ba_covariance_jax.py (`jax.vjp` + one extra forward pass for
"projection", one batched pass for "diagonal" on covered layers, `jax.vmap` for "full" and the
rest); the optimizer's chunk protocol is
ba_momentum_jax.py. The update is data-dependent (it happens once |Y_t| >= m*): every
assignment is `jnp.where(did_update, new, old)`, so one compiled step serves every chunk.
The data-parallel sums over a sharded batch are global under `jax.jit`, so no explicit
all-reduce is needed.
"""

from __future__ import annotations

import jax.numpy as jnp
import keras

from keras_largebatch.optimizers.ba_covariance_jax import chunk_statistics
from keras_largebatch.optimizers.ba_momentum_jax import accumulate_and_apply


def _collect(scope, variables, old):
    new = []
    for var, value in zip(variables, old):
        current = scope.get_current_value(var)
        new.append(value if current is None else current)
    return new


def jax_train_step(model, state, data):
    """The stateless JAX train step of `BATrainStep` (module docstring); returns (logs, state)."""
    trainable, non_trainable, optimizer_state, metrics_state = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if sample_weight is not None:
        raise ValueError("BAModel does not support sample weights. Received sample_weight.")
    model._ba_setup()  # noqa: SLF001
    optimizer = model.optimizer
    stats, non_trainable = chunk_statistics(
        optimizer.covariance, model, model._ba_loss_fn, trainable, non_trainable, x, y,  # noqa: SLF001
        fd_step=optimizer.fd_step,
        per_example=getattr(optimizer._estimator, "per_example", False))  # noqa: SLF001

    mapping = list(zip(optimizer.variables, optimizer_state))
    mapping += list(zip(model.trainable_variables, trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        out = accumulate_and_apply(optimizer, stats)
    optimizer_state = _collect(scope, optimizer.variables, optimizer_state)
    trainable = _collect(scope, model.trainable_variables, trainable)

    metrics_mapping = list(zip(model.metrics_variables, metrics_state))
    with keras.StatelessScope(state_mapping=metrics_mapping) as scope:
        n = keras.tree.flatten(x)[0].shape[0]
        model._loss_tracker.update_state(out["loss"], sample_weight=n)  # noqa: SLF001
        metrics = model._ba_metric_objects  # noqa: SLF001
        updated = out["did_update"].astype(jnp.float32)
        metrics["batch_size_per_update"].update_state(
            out["batch_size_of_update"].astype(jnp.float32), sample_weight=updated)
        metrics["updates"].update_state(updated)
        for key in ("m_star", "mu", "sigma", "s"):
            metrics[key].update_state(out[key])
        logs = model.compute_metrics(x, y, stats["y_pred"])
        for key, metric in metrics.items():
            logs[key] = metric.result()
    metrics_state = _collect(scope, model.metrics_variables, metrics_state)
    return logs, (trainable, non_trainable, optimizer_state, metrics_state)
