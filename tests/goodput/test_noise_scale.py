"""The gradient noise scale against brute force: exact per-example gradients of a softmax
regression on real Fashion-MNIST give exact |G|^2 and tr(Sigma) (McCandlish et al. 2018, Eq.
2.2: tr(Sigma) the trace of the per-example covariance); the train step's estimates, averaged
over many batches drawn with replacement, lie within a few standard errors of them, on one and
two replicas and with accumulation micro-batches; B_simple does not depend on the batch size it
was measured at."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.goodput.noise_scale import (
    SmoothedGradientStats,
    b_simple,
    estimates_from_parts,
    unbiased_estimates,
)
from keras_largebatch.schedules.progress import Progress
from keras_largebatch.training.metrics import RunningMetrics
from keras_largebatch.training.steps.train_step import TrainStep

from .brute_force import N, exact_statistics, per_example_grads, problem_arrays, standard_errors


@pytest.fixture(scope="module")
def problem():
    """Normalised real images, labels, fixed softmax-regression weights, exact statistics."""
    x, y, w, b = problem_arrays()
    per_example = per_example_grads(x, y, w, b)          # [N, 7850]
    return (x, y, w, b, per_example, *exact_statistics(per_example))


def test_two_batch_estimator_is_the_papers_solution():
    """Hand computation: |G|^2 = 2, tr(Sigma) = 64 give E|G_8|^2 = 10, E|G_32|^2 = 4."""
    g2, trace = unbiased_estimates(10.0, 4.0, 8, 32)
    assert g2 == pytest.approx(2.0) and trace == pytest.approx(64.0)
    g2, trace = estimates_from_parts(10.0, 4.0, 32, 4)  # 4 parts of 8
    assert g2 == pytest.approx(2.0) and trace == pytest.approx(64.0)
    assert b_simple(2.0, 64.0) == 32.0
    assert b_simple(0.0, 1.0) == float("inf")


def test_numpy_estimates_are_unbiased(problem):
    """The estimator itself (no TF): its mean over 1500 batches of 64 drawn with replacement,
    as 2 and as 4 parts, is within 4 standard errors of the exact values."""
    x, y, w, b, per_example, exact_g2, exact_trace = problem
    rng = np.random.default_rng(1)
    for parts in (2, 4):
        estimates = []
        for _ in range(1500):
            idx = rng.integers(0, N, size=64)
            chunks = per_example[idx].reshape(parts, 64 // parts, -1).mean(axis=1)
            mean_part = float((chunks ** 2).sum(axis=1).mean())
            whole = chunks.mean(axis=0)
            estimates.append(estimates_from_parts(mean_part, float(whole @ whole), 64, parts))
        est = np.array(estimates)
        mean, se = est.mean(axis=0), est.std(axis=0, ddof=1) / np.sqrt(len(est))
        assert abs(mean[0] - exact_g2) < 4 * se[0], (parts, mean[0], exact_g2, se[0])
        assert abs(mean[1] - exact_trace) < 4 * se[1], (parts, mean[1], exact_trace, se[1])


def _step_estimates(strategy, problem, *, batch, steps, cap=None, seed=2):
    """The train step's smoothed |G|^2, tr(Sigma) over `steps` batches (LR 0: fixed weights),
    and the standard errors of one-batch estimates at that batch, from brute force."""
    x, y, w, b, per_example, *_ = problem
    with strategy.scope():
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
        model.layers[0].set_weights([w, b])
        opt = keras.optimizers.SGD(learning_rate=0.0)
        opt.build(model.trainable_variables)
        metrics = RunningMetrics()
    step = TrainStep(model=model, optimizer=opt, strategy=strategy, progress=Progress(),
                     metrics=metrics, max_per_replica_batch=cap,
                     noise_scale_reference_batch=batch)
    step.noise_scale.stats.smoothing = 0.99999  # ~ the plain mean over these updates
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, N, size=(steps, batch))
    data = tf.data.Dataset.from_tensor_slices((x[idx.ravel()], y[idx.ravel()])).batch(batch)
    it = iter(strategy.experimental_distribute_dataset(data))
    for _ in range(steps):
        step(it)
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], w)  # nothing moved
    stats = step.noise_scale.stats
    return float(stats.sqr().numpy()), float(stats.trace().numpy())


@pytest.mark.parametrize("replicas,cap,parts", [(1, None, 2), (2, None, 2), (2, 16, 4)])
def test_train_step_estimates_match_brute_force(problem, one_cpu_strategy, two_cpu_strategy,
                                                replicas, cap, parts):
    strategy = one_cpu_strategy if replicas == 1 else two_cpu_strategy
    *_, exact_g2, exact_trace = problem
    steps = 250
    g2, trace = _step_estimates(strategy, problem, batch=64, steps=steps, cap=cap)
    se_g2, se_trace = standard_errors(problem[4], 64, parts, estimates=steps)
    assert abs(g2 - exact_g2) < 4 * se_g2, (g2, exact_g2, se_g2)
    assert abs(trace - exact_trace) < 4 * se_trace, (trace, exact_trace, se_trace)


def test_b_simple_does_not_depend_on_the_batch_it_was_measured_at(problem, one_cpu_strategy):
    *_, exact_g2, exact_trace = problem
    exact = exact_trace / exact_g2
    measured = []
    for batch in (32, 256):
        g2, trace = _step_estimates(one_cpu_strategy, problem, batch=batch, steps=300)
        measured.append(trace / g2)
    print(f"B_simple exact {exact:.1f}, measured at 32 / 256: {measured}")
    for value in measured:
        assert value == pytest.approx(exact, rel=0.15)


def test_smoothed_stats_are_bias_corrected_and_skip_non_finite():
    stats = SmoothedGradientStats(reference_batch=32, smoothing=0.9)
    assert not stats.ready() and stats.values()["b_simple"] is None
    stats.update(2.0, 64.0, 32)
    assert float(stats.sqr()) == pytest.approx(2.0)       # the first estimate as it is
    stats.update(4.0, 32.0, 64)                            # theta = 0.9 ** 2 = 0.81
    # biased: 0.81 * 0.2 + 0.19 * 4 = 0.922; unbias 0.81 * 0.1 + 0.19 = 0.271
    assert float(stats.sqr()) == pytest.approx(0.922 / 0.271, rel=1e-6)
    before = stats.values()
    stats.update(float("nan"), 1.0, 32)
    assert stats.values() == before
    with pytest.raises(ValueError, match="smoothing"):
        SmoothedGradientStats(32, smoothing=1.0)
