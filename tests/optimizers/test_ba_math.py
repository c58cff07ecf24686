"""Eqs. 7-9 of seed 002 against direct integration, the paper's closed form and brute force."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, special, stats

from keras_largebatch.optimizers.ba_math import (
    expected_decrease,
    expected_next_state,
    optimal_batch_size,
    tf_expected_next_state,
    tf_optimal_batch_size,
    utility,
)

# (s, S*, mu, sigma, m, lr): ordinary, c < 0 (overshoot), mu < 0, tiny noise, huge noise.
CASES = [
    (1.0, 0.0, 2.0, 30.0, 8, 0.1),
    (0.3, 0.1, 5.0, 100.0, 32, 0.05),
    (0.05, 0.1, 1.0, 3.0, 4, 0.2),
    (1.0, 0.0, -2.0, 5.0, 3, 0.1),
    (2.0, 0.5, 3.0, 1e-3, 64, 0.01),
    (0.02, 0.0, 0.5, 500.0, 1, 0.01),
]


def integrated_next_state(s, floor, mu, sigma, m, lr):
    """E|s - S* - lr * X| + S* with X ~ N(mu, sigma^2 / m) (Eq. 6 averaged), by quadrature."""
    sd = sigma / math.sqrt(m)
    kink = (s - floor) / lr  # |.| has its kink where lr * X = s - S*
    lo, hi = mu - 14 * sd, mu + 14 * sd
    pts = [kink] if lo < kink < hi else None
    val, _ = integrate.quad(
        lambda x: abs(s - floor - lr * x) * stats.norm.pdf(x, mu, sd),
        lo,
        hi,
        points=pts,
        limit=400,
        epsabs=1e-13,
        epsrel=1e-11,
    )
    return val + floor


def paper_form(s, floor, mu, sigma, m, lr):
    """Eq. 7 exactly as printed."""
    c = s - floor - lr * mu
    a = c * math.sqrt(m) / (lr * sigma)
    return (
        c * (stats.norm.cdf(a) - stats.norm.cdf(-a))
        + lr * sigma * math.sqrt(2 / (m * math.pi)) * math.exp(-a * a / 2)
        + floor
    )


@pytest.mark.parametrize("case", CASES)
def test_eq7_matches_numeric_integration_and_paper_form(case):
    got = expected_next_state(*case)
    assert got == pytest.approx(integrated_next_state(*case), rel=1e-9, abs=1e-12)
    assert got == pytest.approx(paper_form(*case), rel=1e-12, abs=1e-14)
    tf_got = float(tf_expected_next_state(*case))
    assert tf_got == pytest.approx(got, rel=1e-12, abs=1e-14)


def test_eq7_vectorised_over_m():
    m = np.arange(1, 200)
    got = expected_next_state(0.4, 0.0, 3.0, 40.0, m, 0.05)
    assert got.shape == m.shape
    want = [paper_form(0.4, 0.0, 3.0, 40.0, int(k), 0.05) for k in m]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # more samples -> less noise -> lower expected next state (E|N(c, tau^2)| rises with tau)
    assert np.all(np.diff(got) <= 1e-15)


def test_decrease_has_no_cancellation_for_large_loss_and_tiny_step():
    # s = 1e6, eta*mu = 1e-9: s - E[s'] computed as a difference would be 0 or noise.
    dec = expected_decrease(1e6, 0.0, 1e-7, 1e-9, 32, 1e-2)
    assert dec == pytest.approx(1e-9, rel=1e-12)


def test_sigma_zero_is_deterministic():
    # E[s'] = |c| + S*, decrease = eta*mu; u(m) = eta*mu / m -> m* = 1.
    assert expected_next_state(1.0, 0.0, 2.0, 0.0, 10, 0.1) == pytest.approx(0.8)
    assert expected_next_state(0.1, 0.0, 2.0, 0.0, 10, 0.1) == pytest.approx(0.1)  # rebound
    assert optimal_batch_size(1.0, 0.0, 2.0, 0.0, 0.1, 512) == 1
    assert int(tf_optimal_batch_size(1.0, 0.0, 2.0, 0.0, 0.1, 512)) == 1
    # c == 0 and sigma == 0 (0/0 in the printed form) is finite.
    assert np.isfinite(expected_next_state(0.2, 0.0, 2.0, 0.0, 4, 0.1))


def test_huge_a_underflows_cleanly():
    val = expected_next_state(1.0, 0.0, 1.0, 1e-12, 10_000, 0.1)
    assert val == pytest.approx(0.9, rel=1e-15)
    assert optimal_batch_size(1.0, 0.0, 1.0, 1e-12, 0.1, 4096) == 1


def test_nonpositive_mu_grows_to_the_cap():
    assert optimal_batch_size(1.0, 0.0, -1.0, 3.0, 0.1, 300) == 300
    assert int(tf_optimal_batch_size(1.0, 0.0, -1.0, 3.0, 0.1, 300)) == 300
    # f == 0: u == 0 everywhere -> smallest m
    assert optimal_batch_size(1.0, 0.0, 0.0, 0.0, 0.1, 300) == 1


def brute_force(s, floor, mu, sigma, lr, cap):
    """First argmax over m = 1..cap of u(m) with Eq. 7 as printed (no shared code)."""
    m = np.arange(1, cap + 1, dtype=np.float64)
    c = s - floor - lr * mu
    if sigma == 0:
        u = (s - floor - abs(c)) / m
    else:
        a = c * np.sqrt(m) / (lr * sigma)
        e = (
            c * (special.ndtr(a) - special.ndtr(-a))
            + lr * sigma * np.sqrt(2 / (m * np.pi)) * np.exp(-a * a / 2)
            + floor
        )
        u = (s - e) / m
    return int(np.argmax(u)) + 1


@pytest.mark.parametrize("seed", range(8))
def test_optimal_batch_size_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(25):
        s = float(rng.uniform(0.01, 2.0))
        floor = float(rng.choice([0.0, rng.uniform(0.0, s)]))
        mu = float(rng.lognormal(0.0, 1.5)) * (1 if rng.random() < 0.85 else -1)
        sigma = float(rng.lognormal(2.0, 2.0))
        lr = float(rng.choice([0.005, 0.01, 0.05, 0.2]))
        cap = int(rng.choice([64, 500, 2048]))
        want = brute_force(s, floor, mu, sigma, lr, cap)
        got = optimal_batch_size(s, floor, mu, sigma, lr, cap)
        tf_got = int(tf_optimal_batch_size(s, floor, mu, sigma, lr, cap))
        args = (s, floor, mu, sigma, lr)
        # u is flat near its maximum: accept a different m only if its utility is equal
        # to float precision.
        u_want = utility(*args[:4], want, lr)
        assert utility(*args[:4], got, lr) == pytest.approx(u_want, rel=1e-12, abs=1e-300), args
        assert utility(*args[:4], tf_got, lr) == pytest.approx(u_want, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("cap", [1, 2, 3, 63, 64, 65, 129, 1000, 65_536])
def test_tf_staged_search_is_exact_for_any_cap(cap):
    rng = np.random.default_rng(cap)
    for _ in range(12):
        s = float(rng.uniform(0.001, 1.0))
        mu = float(rng.lognormal(0.0, 1.0))
        sigma = float(rng.lognormal(3.0, 2.0))
        args = (s, 0.0, mu, sigma)
        want = brute_force(*args, 0.01, cap)
        got = int(tf_optimal_batch_size(*args, 0.01, cap))
        assert 1 <= got <= cap
        assert utility(*args, got, 0.01) == pytest.approx(
            utility(*args, want, 0.01), rel=1e-12, abs=1e-300
        )


def test_batch_grows_as_loss_approaches_floor():
    ms = [optimal_batch_size(s, 0.0, 10.0, 300.0, 0.01, 4096) for s in (0.5, 0.1, 0.01)]
    assert ms[0] < ms[1] < ms[2]


def test_tf_version_works_in_graph():
    fn = tf.function(lambda s, sig: tf_optimal_batch_size(s, 0.0, 10.0, sig, 0.01, 4096))
    assert int(fn(tf.constant(0.1, tf.float64), tf.constant(300.0, tf.float64))) == (
        optimal_batch_size(0.1, 0.0, 10.0, 300.0, 0.01, 4096)
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(sigma=-1.0), "sigma"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(s=float("nan")), "s"),
        (dict(mu=float("inf")), "mu"),
        (dict(max_batch_size=0), "max_batch_size"),
        (dict(max_batch_size=2.5), "max_batch_size"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, name):
    args = dict(s=1.0, loss_floor=0.0, mu=1.0, sigma=1.0, learning_rate=0.1, max_batch_size=64)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        optimal_batch_size(**args)


def test_bad_m_in_eq7():
    with pytest.raises(ValueError, match="m"):
        expected_next_state(1.0, 0.0, 1.0, 1.0, 0, 0.1)
