"""Per-example gradient statistics of one chunk on the JAX backend (seed 002, Eqs. 1 and 4).

The JAX twin of ba_covariance.py's `chunk_statistics`: a pure function of the model's state
arrays, for the jitted stateless train step (optimizers/ba_model_jax.py):

    stats, non_trainable = chunk_statistics(mode, model, loss_fn, trainable, non_trainable, x, y)

with, over the chunk's n examples j (l_j its loss, g_j its gradient, z_j its model output):

    stats["loss_sum"] = sum_j l_j,   stats["count"] = n,   stats["grad_sum"] = sum_j g_j

and per `BAMomentum(covariance=...)` mode the sums that sigma^2 = f^T Sigma f needs (Eq. 4):

- "projection": `jax.vjp` of the forward pass gives sum_j g_j and dl_j/dz_j in one backward
  pass; `stats["project"](f)` runs ONE extra forward pass at theta + eps f, with the main
  pass's dropout seeds (the non-trainable state before it), and returns
  sum_j (p_j - f . f)^2 with p_j = dl_j/dz_j . (z_j(theta + eps f) - z_j(theta)) / eps = f . g_j
  (finite difference on the outputs, eps = fd_step * max(|theta|, 1) / |f|, exactly as on
  TensorFlow, so both backends take the same decisions).
- "diagonal": stats["sq_sum"] = sum_j g_j**2 per coordinate, from one batched forward and
  backward pass (ba_sum_grad_squared_jax.py, as TensorFlow's ba_sum_grad_squared.py) when every
  trainable variable belongs to a covered layer (Dense, Conv2D); otherwise (with a warning
  naming the layers) from per-example gradients as "full" below.
- "full": per-example gradients by `jax.vmap` of `jax.value_and_grad` over the examples;
  stats["outer_sum"] = sum_j vec(g_j) vec(g_j)^T.

On the per-example path every example j gets its own dropout masks (its seed states offset by
j * 1_000_003, as on TensorFlow) and the seed states then advance once; batch-coupled layers
(BatchNorm) see one example and their moving statistics are not updated (use "projection").
The batched pass draws the chunk's masks in one call, as a plain training step does.
Weight regularisers are added to every example's loss; activity regularisers are ignored.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import keras

from keras_largebatch.optimizers.ba_covariance import _SEED_STRIDE, _float32_compute
from keras_largebatch.optimizers.ba_sum_grad_squared import uncovered_layers
from keras_largebatch.optimizers.ba_sum_grad_squared_jax import batched_sum_grad_squared


def _per_example(loss_fn, y, y_pred, n):
    return jnp.reshape(jnp.asarray(loss_fn(y, y_pred)).astype(jnp.float32), [n])


def _regularization(model, trainable):
    """(R, dR/dtheta) of the weight regularisers at `trainable`, or (None, None)."""
    regs = [getattr(v, "regularizer", None) for v in model.trainable_variables]
    if not any(regs):
        return None, None

    def total(values):
        return sum(jnp.asarray(r(v)).astype(jnp.float32)
                   for v, r in zip(values, regs) if r is not None)

    return jax.value_and_grad(total)(list(trainable))


def chunk_statistics(mode, model, loss_fn, trainable, non_trainable, x, y, *, fd_step=3e-4,
                     per_example=False):
    """(statistics of one chunk, the model's non-trainable state after it); see module doc.

    `trainable`, `non_trainable`: arrays in the order of `model.trainable_variables` /
    `model.non_trainable_variables`; `loss_fn(y_true, y_pred)` returns one loss per example.
    `stats["y_pred"]` holds the outputs (for metrics). `per_example=True` takes the
    per-example path in "diagonal" mode even where the batched pass covers the model.
    """
    trainable, non_trainable = list(trainable), list(non_trainable)
    n = keras.tree.flatten(x)[0].shape[0]
    reg, reg_grads = _regularization(model, trainable)
    if mode == "projection":
        stats, new_non_trainable = _projection(model, loss_fn, trainable, non_trainable, x, y,
                                               n, fd_step, reg_grads)
    elif mode == "diagonal" and not per_example and _batched(model):
        stats, new_non_trainable = batched_sum_grad_squared(
            model, lambda p: _per_example(loss_fn, y, p, n), trainable, non_trainable, x, n)
        if reg_grads is not None:  # every g_j gains r: sum_j (g_j + r)^2 = S2 + 2 r S1 + n r^2
            stats["sq_sum"] = [q + 2.0 * r * g + n * jnp.square(r)
                               for q, g, r in zip(stats["sq_sum"], stats["grad_sum"], reg_grads)]
            stats["grad_sum"] = [g + n * r for g, r in zip(stats["grad_sum"], reg_grads)]
    elif mode in ("diagonal", "full"):
        stats, new_non_trainable = _exact(mode, model, loss_fn, trainable, non_trainable, x, y,
                                          n, reg_grads)
    else:
        raise ValueError(f"unknown covariance mode {mode!r}")
    stats["count"] = jnp.float32(n)
    if reg is not None:
        stats["loss_sum"] = stats["loss_sum"] + n * reg
    return stats, new_non_trainable


def _batched(model):
    """Whether the batched pass covers `model` (warns, naming the layers, where it does not)."""
    uncovered = uncovered_layers(model, model.trainable_variables)
    if uncovered:
        warnings.warn(f"covariance='diagonal': no batched formula for {', '.join(uncovered)}"
                      "; using slower per-example gradients (BatchNormalization then sees "
                      "each example alone).", stacklevel=4)
    return not uncovered


def _projection(model, loss_fn, trainable, non_trainable, x, y, n, fd_step, reg_grads):
    def forward(values):
        return model.stateless_call(values, non_trainable, x, training=True)

    y_pred, pullback, new_non_trainable = jax.vjp(forward, trainable, has_aux=True)

    def total_loss(outputs):
        return jnp.sum(_per_example(loss_fn, y, outputs, n))

    total, dl_dz = jax.value_and_grad(total_loss)(y_pred)
    (grads,) = pullback(dl_dz)
    grads = list(grads)
    if reg_grads is not None:
        grads = [g + n * r for g, r in zip(grads, reg_grads)]

    def project(direction):
        """sum_j (f . g_j - f . f)^2 for direction f (0 when f = 0)."""
        ff = sum(jnp.sum(jnp.square(d)) for d in direction)
        theta_norm = jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in trainable))
        safe_ff = jnp.where(ff > 0, ff, 1.0)
        eps = fd_step * jnp.maximum(theta_norm, 1.0) / jnp.sqrt(safe_ff)
        moved = [v + (eps * d).astype(v.dtype) for v, d in zip(trainable, direction)]
        with _float32_compute(model) as mixed:
            y_pert, _ = model.stateless_call(moved, non_trainable, x, training=True)
            if mixed:  # differences of 16-bit outputs would be mostly round-off
                y_ref, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        if not mixed:
            y_ref = y_pred
        p = jnp.zeros([n], jnp.float32)
        for g_z, z0, z1 in zip(keras.tree.flatten(dl_dz), keras.tree.flatten(y_ref),
                               keras.tree.flatten(y_pert)):
            prod = g_z.astype(jnp.float32) * (z1 - z0).astype(jnp.float32)
            p = p + jnp.sum(jnp.reshape(prod, [n, -1]), axis=1)
        p = p / eps
        if reg_grads is not None:
            p = p + sum(jnp.sum(d * r) for d, r in zip(direction, reg_grads))
        ssd = jnp.sum(jnp.square(p - ff))
        return jnp.where(ff > 0, ssd, 0.0)

    return ({"loss_sum": total, "grad_sum": grads, "project": project, "y_pred": y_pred},
            new_non_trainable)


def _exact(mode, model, loss_fn, trainable, non_trainable, x, y, n, reg_grads):
    seeds = [i for i, v in enumerate(model.non_trainable_variables)
             if v.name == "seed_generator_state"]

    def one_example(xi, yi, j):
        xi = keras.tree.map_structure(lambda t: t[None], xi)
        yi = keras.tree.map_structure(lambda t: t[None], yi)
        state = list(non_trainable)
        for i in seeds:  # this example's own dropout masks
            offset = jnp.stack([j * _SEED_STRIDE, jnp.zeros_like(j)])
            state[i] = state[i] + offset.astype(state[i].dtype)

        def loss_of(values):
            pred, _ = model.stateless_call(values, state, xi, training=True)
            return jnp.reshape(_per_example(loss_fn, yi, pred, 1), []), pred

        (loss, pred), g = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        return loss, g, keras.tree.map_structure(lambda t: t[0], pred)

    losses, per_example, y_pred = jax.vmap(one_example)(x, y, jnp.arange(n, dtype=jnp.int32))
    per_example = list(per_example)
    new_non_trainable = list(non_trainable)
    for i in seeds:  # the real seed states advance once, as after one batched call
        step = jnp.asarray([0, 1]).astype(new_non_trainable[i].dtype)
        new_non_trainable[i] = new_non_trainable[i] + step
    if reg_grads is not None:
        per_example = [g + r[None] for g, r in zip(per_example, reg_grads)]
    stats = {"loss_sum": jnp.sum(losses), "y_pred": y_pred,
             "grad_sum": [jnp.sum(g, axis=0) for g in per_example]}
    if mode == "diagonal":
        stats["sq_sum"] = [jnp.sum(jnp.square(g), axis=0) for g in per_example]
    else:
        flat = jnp.concatenate([jnp.reshape(g.astype(jnp.float32), [n, -1])
                                for g in per_example], axis=1)
        stats["outer_sum"] = flat.T @ flat
    return stats, new_non_trainable
