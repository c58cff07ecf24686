"""BA-Momentum's chunk protocol on the JAX backend (seed 002, Algorithm 1, Eqs. 7-11 and 15).

The TensorFlow protocol (ba_momentum.py: `accumulate`, `should_update`, `apply_accumulated`)
all-reduces through `tf.distribute` and updates inside `merge_call`; under JAX the same
algorithm is written as traceable code for a jitted, stateless Keras train step
(optimizers/ba_model_jax.py). It runs inside one `keras.StatelessScope` that maps the
optimizer's and the model's trainable variables to the step's state arrays: `var.value` reads
the traced value, `var.assign` records the new one, and the caller collects them.

    with keras.StatelessScope(state_mapping=...) as scope:
        info = accumulate_and_apply(optimizer, stats, finite_check=True)

per chunk of m0 examples (one `fit` step), with Y_t the batch grown so far (Eq. 4, 15):

    |Y_t| += n;  sum_j l_j += loss;  sum_j g_j += grad_sum      (the chunk's sums)
    f = sum_j g_j / |Y_t|;  s = sum_j l_j / |Y_t|;  mu = f . (rho mu_p + f)  (f . f if rho = 0)
    sigma^2 = f^T Sigma_t f (the estimator's form);  m* = argmax_m u(m)     (Eqs. 7-9)
    m* = 1 if mu <= 0;  m* >= 2 while |Y_t| = 1          (ba_momentum.py's two decisions)
    do = |Y_t| >= min(m*, max_batch_size, dataset_size)
    where do: v <- rho v + eta f; theta <- theta - v; mu_p <- rho mu_p + f  (Eqs. 10, 11, 15)
              accumulators <- 0; iterations += 1

Every update is masked with `jnp.where(do, ...)` (no Python branch on a traced value). The
formulas, dtypes and variable layout are those of the TensorFlow path, so one `.keras` file
loads on both and a JAX fit gives the TF update sequence to float tolerance
(tests/optimizers/test_ba_jax.py). Without `jax_enable_x64` the optimizer's float64 scalars
are float32 on JAX (Keras stores what JAX allows); the counts stay exact below 2^24 examples.

A non-finite loss or gradient leaves the state unchanged and raises `FloatingPointError` from a
host callback naming the update (the TF path's in-graph assert).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from keras_largebatch.optimizers.ba_math import (  # the search's grid, shared with TF
    _GRID,
    _refinement_stages,
    eq7_sigma2,
)

_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _normal_loss(x):
    """L(x) = phi(x) - x Q(x) for x >= 0 (ba_math.py)."""
    phi = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    q = 0.5 * jax.scipy.special.erfc(x / _SQRT_2)
    return jnp.maximum(phi - x * q, 0.0)


def expected_decrease(s, loss_floor, mu, sigma, m, learning_rate):
    """s - E_m[s'] = eta mu - 2 max(-c, 0) - 2 tau L(|a|) (Eq. 7; ba_math.py), broadcast."""
    c = s - loss_floor - learning_rate * mu
    tau = learning_rate * sigma / jnp.sqrt(m)
    positive = tau > 0
    a = jnp.abs(c) / jnp.where(positive, tau, jnp.ones_like(tau))
    noise = jnp.where(positive, 2.0 * tau * _normal_loss(a), jnp.zeros_like(tau))
    return learning_rate * mu - 2.0 * jnp.maximum(-c, 0.0) - noise


def optimal_batch_size(s, loss_floor, mu, sigma, learning_rate, max_batch_size: int):
    """Eq. 9: m* = argmax_{1 <= m <= max_batch_size} u(m), u(m) = (s - E_m[s']) / m (Eq. 8).

    The bracketing search of `ba_math.tf_optimal_batch_size` (u is unimodal): 64 evenly spaced
    m per stage, keep the neighbours of the first best point, until <= 64 integers remain.
    Computes in the dtype of `s` (float64 with jax_enable_x64, else float32); returns int32.
    """
    cap = int(max_batch_size)
    dtype = jnp.result_type(s)
    s, loss_floor, mu, sigma, lr = (jnp.asarray(t, dtype) for t in
                                    (s, loss_floor, mu, sigma, learning_rate))
    lo, hi = jnp.int32(1), jnp.int32(cap)
    steps = jnp.arange(_GRID, dtype=dtype) / (_GRID - 1)
    index = jnp.arange(_GRID, dtype=jnp.int32)
    best = hi
    for _ in range(_refinement_stages(cap)):
        grid = lo + jnp.round(steps * (hi - lo).astype(dtype)).astype(jnp.int32)
        m = grid.astype(dtype)
        u = expected_decrease(s, loss_floor, mu, sigma, m, lr) / m
        u = jnp.where(jnp.isnan(u), -jnp.inf, u)
        first = jnp.min(jnp.where(u >= jnp.max(u), index, _GRID - 1))
        best = grid[first]
        lo = grid[jnp.maximum(first - 1, 0)]
        hi = grid[jnp.minimum(first + 1, _GRID - 1)]
    all_bad = jnp.all(jnp.isinf(u) & (u < 0))
    return jnp.where(all_bad, jnp.int32(cap), best)


def _raise_if_not_finite(finite, update, chunk, loss_sum, ff):
    if not bool(finite):
        raise FloatingPointError(
            f"BAMomentum: non-finite loss or gradient while growing the batch of update "
            f"{int(update)} (chunk {int(chunk)} of the batch; loss sum {float(loss_sum)}, "
            f"|f|^2 {float(ff)}). The state was not changed; lower the learning rate or check "
            "the inputs."
        )


def _sum_f32(parts):
    return sum(jnp.sum(p.astype(jnp.float32)) for p in parts)


def _sigma2(optimizer, stats, f, ff, count, dof):
    """(sigma^2 over Y_t with this chunk, [(variable, new value)]) for the optimizer's mode.

    The formulas of ba_covariance.py's `sigma2` methods, one per `covariance=` mode.
    """
    est = optimizer._estimator  # noqa: SLF001
    f64 = count.dtype
    if est.mode == "projection":
        # sum over the chunk of (p_j - |f|^2)^2 / |f|^2, accumulated over the chunks of Y_t
        safe = jnp.where(ff > 0, ff, jnp.ones_like(ff))
        unit = jnp.where(ff > 0, stats["project"](f).astype(f64) / safe, jnp.zeros_like(ff))
        ssd = est.projection_ssd.value + unit
        return ff * ssd / dof, [(est.projection_ssd, ssd)]
    if est.mode == "diagonal":  # sigma^2 = sum_i f_i^2 Sigma_ii
        sq = [s.value + q.astype(s.dtype) for s, q in zip(est.sq_sums, stats["sq_sum"])]
        total = sum(jnp.sum(jnp.square(fi.astype(f64))
                            * jnp.maximum(q.astype(f64) - count * jnp.square(fi.astype(f64)), 0.0))
                    for fi, q in zip(f, sq))
        return total / dof, list(zip(est.sq_sums, sq))
    if est.mode == "full":  # sigma^2 = f^T Sigma f from sum_j g_j g_j^T
        outer = est.outer_sum.value + stats["outer_sum"]
        fvec = jnp.concatenate([jnp.reshape(fi.astype(f64), [-1]) for fi in f])
        quad = jnp.sum(fvec * (outer.astype(f64) @ fvec))
        return jnp.maximum(quad - count * jnp.square(ff), 0.0) / dof, [(est.outer_sum, outer)]
    raise ValueError(f"unknown covariance mode {est.mode!r}")


def accumulate_and_apply(optimizer, stats: dict, *, finite_check: bool = True) -> dict:
    """One chunk of Algorithm 1 on JAX: grow Y_t, recompute m*, update where |Y_t| >= target.

    Call inside a `keras.StatelessScope` mapping `optimizer.variables` and the trainable
    variables (module docstring). `stats`: the chunk's sums from
    `ba_covariance_jax.chunk_statistics` ("loss_sum", "count", "grad_sum" and the mode's
    "project" / "sq_sum" / "outer_sum"). Returns the scalars of `ba_chunk_step`: loss,
    did_update, batch_size_of_update, m_star, mu, sigma, s, accumulated.
    """
    opt = optimizer
    f64 = opt._count.value.dtype  # noqa: SLF001  float64, or float32 without jax_enable_x64
    i64 = opt._m_star.value.dtype  # noqa: SLF001
    chunk_loss = stats["loss_sum"].astype(jnp.float32)
    chunk_count = jnp.asarray(stats["count"], jnp.float32)

    count = opt._count.value + chunk_count.astype(f64)  # noqa: SLF001
    loss_sum = opt._loss_sum.value + chunk_loss.astype(f64)  # noqa: SLF001
    grad_sums = [gs.value + g.astype(gs.dtype) for gs, g in zip(opt._grad_sums,  # noqa: SLF001
                                                                 stats["grad_sum"])]
    count_f = count.astype(jnp.float32)
    f = [gs / count_f.astype(gs.dtype) for gs in grad_sums]
    ff = _sum_f32(jnp.square(fi.astype(jnp.float32)) for fi in f).astype(f64)
    dof = jnp.maximum(count - 1.0, 1.0)
    sigma2, updates = _sigma2(opt, stats, f, ff, count, dof)
    if opt.momentum > 0:  # mu = f . mu_p with mu_p = rho mu_p_{t-1} + f (Eq. 15)
        mu = _sum_f32(fi * (opt.momentum * mp.value + fi)
                      for fi, mp in zip(f, opt._momentum_means)).astype(f64)  # noqa: SLF001
    else:
        mu = ff
    s = loss_sum / count
    sigma2 = eq7_sigma2(sigma2, count, opt.sigma_convention)  # "authors": / |Y_t|
    sigma = jnp.sqrt(jnp.maximum(sigma2, 0.0))
    finite = jnp.all(jnp.isfinite(jnp.stack([s, ff, mu, sigma2])))
    if finite_check:
        jax.debug.callback(_raise_if_not_finite, finite, opt._iterations.value + 1,  # noqa: SLF001
                           opt._chunks.value + 1, loss_sum, ff)  # noqa: SLF001

    lr = jnp.asarray(opt.learning_rate).astype(f64)
    m_star = optimal_batch_size(s, opt.loss_floor, mu, sigma, lr, opt.max_batch_size)
    m_star = jnp.where(mu <= 0, jnp.ones_like(m_star), m_star)  # momentum points uphill
    m_star = jnp.where(count < 2.0, jnp.maximum(m_star, 2), m_star)  # Sigma needs 2 examples
    m_star = m_star.astype(i64)
    updates += list(zip(opt._grad_sums, grad_sums))  # noqa: SLF001
    updates += [(opt._count, count), (opt._loss_sum, loss_sum),  # noqa: SLF001
                (opt._chunks, opt._chunks.value + 1), (opt._m_star, m_star),  # noqa: SLF001
                (opt._mu, mu), (opt._sigma, sigma), (opt._state, s)]  # noqa: SLF001
    for var, value in updates:  # a non-finite chunk changes nothing (TF: assert first)
        var.assign(jnp.where(finite, jnp.asarray(value).astype(var.value.dtype), var.value))

    cap = opt.max_batch_size if opt.dataset_size is None else min(opt.max_batch_size,
                                                                   opt.dataset_size)
    count = opt._count.value  # noqa: SLF001
    threshold = jnp.minimum(opt._m_star.value, cap).astype(f64)  # noqa: SLF001
    do = (count > 0) & (count >= threshold) & finite
    batch = count.astype(i64)
    _apply_masked(opt, do, count)
    return {
        "loss": chunk_loss / chunk_count,
        "did_update": do,
        "batch_size_of_update": jnp.where(do, batch, jnp.zeros_like(batch)),
        "m_star": opt._m_star.value, "mu": opt._mu.value,  # noqa: SLF001
        "sigma": opt._sigma.value, "s": opt._state.value,  # noqa: SLF001
        "accumulated": jnp.where(do, jnp.zeros_like(batch), batch),
    }


def _apply_masked(opt, do, count):
    """Where `do`: v <- rho v + lr f; theta <- theta - v; mu_p <- rho mu_p + f; reset Y_t.

    `BAMomentum.apply_accumulated` / `_masked_update` of the TensorFlow path, op for op.
    """
    safe = jnp.where(count > 0, count, jnp.ones_like(count))
    f = [gs.value / safe.astype(gs.dtype) for gs in opt._grad_sums]  # noqa: SLF001
    f = opt._clip_gradients(f)  # noqa: SLF001
    lr = jnp.asarray(opt.learning_rate).astype(jnp.float32)
    for index, (g, variable) in enumerate(zip(f, opt._trainable_variables)):  # noqa: SLF001
        dtype = variable.value.dtype
        g = jnp.asarray(g).astype(dtype)
        if opt.momentum > 0:
            velocity, mean = opt._velocities[index], opt._momentum_means[index]  # noqa: SLF001
            rho = jnp.asarray(opt.momentum, dtype)
            new_velocity = jnp.where(do, rho * velocity.value + lr.astype(dtype) * g,
                                     velocity.value)
            velocity.assign(new_velocity)
            mean.assign(jnp.where(do, rho * mean.value + g, mean.value))
            step = new_velocity
        else:
            step = lr.astype(dtype) * g
        variable.assign(variable.value - jnp.where(do, step, jnp.zeros_like(step)))

    def reset(var, value=None):
        value = jnp.zeros_like(var.value) if value is None else value
        var.assign(jnp.where(do, jnp.asarray(value).astype(var.value.dtype), var.value))

    for var in opt._grad_sums + opt._estimator.accumulators():  # noqa: SLF001
        reset(var)
    reset(opt._last_batch_size, count)  # noqa: SLF001
    for var in (opt._count, opt._loss_sum, opt._chunks):  # noqa: SLF001
        reset(var)
    iterations = opt._iterations  # noqa: SLF001
    iterations.assign(iterations.value + do.astype(iterations.value.dtype))

