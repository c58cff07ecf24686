"""BAMomentum's sigma conventions (ba_math.py): the paper's f^T Sigma f and the authors' code's
f^T Sigma f / |Y_t|, checked against m* computed by hand from Eq. 7 as printed in seed 002:

    E_m[s'] = c (Phi(a) - Phi(-a)) + eta sigma sqrt(2 / (m pi)) exp(-a^2 / 2) + S*,
    c = s - S* - eta mu,  a = c sqrt(m) / (eta sigma);   m* = argmax_m (s - E_m[s']) / m.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import norm

from keras_largebatch.optimizers import ba_math
from keras_largebatch.optimizers.ba_model import ba_chunk_step
from keras_largebatch.optimizers.ba_momentum import BAMomentum

SQUARED = lambda y, p: 0.5 * tf.reduce_sum(tf.square(y - p), axis=-1)  # noqa: E731


def eq7_m_star(s, floor, mu, sigma, lr, cap):
    """Eq. 9 over m = 1..cap with Eq. 7 in its printed form (no rewriting)."""
    m = np.arange(1, cap + 1, dtype=np.float64)
    c = s - floor - lr * mu
    a = c * np.sqrt(m) / (lr * sigma)
    expected = (c * (norm.cdf(a) - norm.cdf(-a))
                + lr * sigma * np.sqrt(2.0 / (m * math.pi)) * np.exp(-a * a / 2) + floor)
    return int(np.argmax((s - expected) / m)) + 1


def test_authors_convention_is_eq7_at_sigma2_over_the_batch():
    s, floor, mu, lr, sigma2, n = 0.6, 0.5, 1.0, 0.01, 1e5, 32
    paper = ba_math.optimal_batch_size(s, floor, mu, math.sqrt(sigma2), lr, 100000)
    authors = ba_math.optimal_batch_size(
        s, floor, mu, math.sqrt(ba_math.eq7_sigma2(sigma2, n, "authors")), lr, 100000)
    assert paper == eq7_m_star(s, floor, mu, math.sqrt(sigma2), lr, 100000)
    assert authors == eq7_m_star(s, floor, mu, math.sqrt(sigma2 / n), lr, 100000)
    assert paper > 10 * n and authors == pytest.approx(paper / n, rel=0.05)  # ~|Y_t| smaller
    assert ba_math.eq7_sigma2(sigma2, n, "paper") == sigma2
    with pytest.raises(ValueError, match="sigma_convention='code'"):
        ba_math.eq7_sigma2(sigma2, n, "code")


def _problem():
    """64 noisy least-squares examples and a linear model: (x, y, model, theta)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (3.0 * rng.normal(size=(64, 1))).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    # near the least-squares solution: the mean gradient is small against its noise
    xa = np.c_[x, np.ones(len(x))]
    theta = (np.linalg.lstsq(xa, y, rcond=None)[0][:, 0] + 0.05).astype("float32")
    model.layers[-1].set_weights([theta[:4, None], theta[4:]])
    return x, y, model, theta.astype(np.float64)


def _by_hand(x, y, theta):
    """Loss s, mean gradient f and f^T diag(Sigma) f (App. C) of the batch, in float64."""
    xa = np.c_[x, np.ones(len(x))].astype(np.float64)
    r = xa @ theta - y[:, 0]
    g = r[:, None] * xa                        # per-example gradients of (x.w + b - y)^2 / 2
    f, n = g.mean(axis=0), len(g)
    var = ((g - f) ** 2).sum(axis=0) / (n - 1)
    return float(np.mean(0.5 * r**2)), f, float(np.sum(f**2 * var))


LR = 0.01


def _one_chunk(convention):
    """BA-SGD (diagonal Sigma) after one chunk of all 64 examples, with S* just below s so
    that m* is large; returns the optimizer and the hand-computed (s, floor, mu, f^T Sigma f)."""
    x, y, model, theta = _problem()
    s, f, sigma2 = _by_hand(x, y, theta)
    floor = s - LR * float(f @ f) - 5e-5       # c = s - S* - eta mu = 5e-5
    opt = BAMomentum(learning_rate=LR, momentum=0.0, min_increment=64, max_batch_size=65536,
                     loss_floor=floor, covariance="diagonal", sigma_convention=convention)
    opt.build(model.trainable_variables)
    ba_chunk_step(model, opt, SQUARED, tf.constant(x), tf.constant(y))
    return opt, (s, floor, float(f @ f), sigma2)


@pytest.mark.parametrize("convention", ["paper", "authors"])
def test_bamomentum_m_star_matches_eq7_by_hand(convention):
    """BA-SGD with the paper's diagonal Sigma (App. C) after one chunk of 64 examples: m*
    equals Eq. 9 over the printed Eq. 7 with that convention's sigma."""
    opt, (s, floor, mu, sigma2) = _one_chunk(convention)
    if convention == "authors":
        sigma2 /= 64                              # |Y_t| = 64
    expected = eq7_m_star(s, floor, mu, math.sqrt(sigma2), LR, 65536)
    stats = opt.statistics()
    assert float(stats["sigma"]) == pytest.approx(math.sqrt(sigma2), rel=1e-4)
    assert expected > 6 * 64 if convention == "paper" else expected > 4
    # paper 463, authors 7 (float32 loss and gradients: c = 5e-5 is known to ~1%)
    assert abs(int(stats["m_star"]) - expected) <= max(1, 0.03 * expected)
    assert opt.get_config()["sigma_convention"] == convention
    assert BAMomentum.from_config(opt.get_config()).sigma_convention == convention


def test_authors_m_star_is_about_the_batch_times_smaller():
    m_paper = int(_one_chunk("paper")[0].statistics()["m_star"])
    m_authors = int(_one_chunk("authors")[0].statistics()["m_star"])
    assert m_paper > 64 * 4
    assert m_authors == pytest.approx(m_paper / 64, rel=0.1)


def test_bad_convention_names_the_value():
    with pytest.raises(ValueError, match="sigma_convention='diagonal'"):
        BAMomentum(sigma_convention="diagonal")
