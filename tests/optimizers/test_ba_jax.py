"""BAModel + BAMomentum on the JAX backend, against NumPy and against the TensorFlow path.

Keras fixes its backend per process: the JAX side runs once in a subprocess
(`KERAS_BACKEND=jax python -m tests.optimizers.ba_backend_worker`), the TensorFlow side in this
session, both on the same data and initial weights. References:

- one chunk of m0 = 16 examples on a linear model (loss (y - x w - b)^2): per-example gradients
  g_j = -2 r_j [x_j, 1] by hand in NumPy, f = mean_j g_j, Sigma = cov_j(g_j) (Eq. 4), mu = f . f
  (first chunk: mu_p = 0, Eq. 15), sigma^2 = f^T Sigma f ("projection", "full") or
  sum_i f_i^2 Sigma_ii ("diagonal"), m* = ba_math.optimal_batch_size (Eq. 9);
- 3 epochs of model.fit (72 chunks, data-dependent batches 16..128) per mode: the same update
  count, per-epoch batch sizes and weights on JAX as on TensorFlow;
- a .keras file saved after 7 chunks (mid-batch), loaded and trained 13 more chunks, equals 20
  uninterrupted chunks (as tests/keras_conformance/test_bamodel_saving.py on TensorFlow).
"""

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_largebatch.optimizers.ba_math import optimal_batch_size
from tests.backend_env import backend_env, require_backend
from tests.optimizers import ba_backend_worker as worker

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODES = ("projection", "diagonal", "full")

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the TensorFlow side runs in this session")


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    require_backend("jax")
    tmp = tmp_path_factory.mktemp("ba_jax")
    out = tmp / "jax.json"
    env = backend_env("jax", ROOT)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "tests.optimizers.ba_backend_worker", str(out),
         str(tmp)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(out.read_text())


def numpy_one_chunk(mode, sigma_convention="paper"):
    """mu, sigma, s, m* of the first chunk, from hand-written per-example gradients
    ("authors": f^T Sigma f divided by |Y_t| = m0 before Eq. 7)."""
    x, y = worker.data()
    x, y = x[: worker.M0].astype(np.float64), y[: worker.M0].astype(np.float64)
    w, b = (a.astype(np.float64) for a in worker.initial_weights([(worker.D, 1), (1,)]))
    r = y - x @ w - b                                   # residuals, [n, 1]
    s = float(np.mean(r**2))                            # MSE per example: r_j^2
    grads = -2.0 * r * np.c_[x, np.ones(len(x))]        # g_j = dl_j / d(w, b)
    f = grads.mean(axis=0)
    cov = np.cov(grads, rowvar=False, ddof=1)           # Eq. 4
    mu = float(f @ f)                                   # first chunk: mu_p = f
    sigma2 = float(f @ cov @ f) if mode != "diagonal" else float(np.sum(f**2 * np.diag(cov)))
    if sigma_convention == "authors":
        sigma2 /= worker.M0
    sigma = np.sqrt(sigma2)
    lr = float(np.float32(worker.LR))
    m_star = optimal_batch_size(s, worker.ONE_CHUNK_FLOOR, mu, sigma, lr, 128)
    return {"mu": mu, "sigma": sigma, "s": s, "m_star": m_star}


@pytest.mark.parametrize("mode", MODES)
def test_tensorflow_one_chunk_equals_numpy(mode):
    """The reference problem itself, on the TensorFlow path (so both sides share one truth)."""
    got, want = worker.one_chunk(mode), numpy_one_chunk(mode)
    assert 1 < want["m_star"] < 128  # an interior m*, so the test can see a wrong sigma
    assert got["m_star"] == want["m_star"]
    rtol = 2e-3 if mode == "projection" else 1e-5  # finite difference at fd_step = 3e-4
    np.testing.assert_allclose([got["mu"], got["s"]], [want["mu"], want["s"]], rtol=1e-5)
    np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_jax_one_chunk_equals_numpy(jax_results, mode):
    got, want = jax_results["one_chunk"][mode], numpy_one_chunk(mode)
    assert jax_results["backend"] == "jax"
    assert got["m_star"] == want["m_star"]
    rtol = 2e-3 if mode == "projection" else 1e-5
    np.testing.assert_allclose([got["mu"], got["s"]], [want["mu"], want["s"]], rtol=1e-5)
    np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=rtol)


@pytest.mark.slow
def test_authors_sigma_convention_on_both_backends(jax_results):
    """sigma_convention='authors' (diagonal): the same m* on TF, on JAX and by hand."""
    want = numpy_one_chunk("diagonal", "authors")
    assert want["m_star"] < numpy_one_chunk("diagonal")["m_star"]  # the convention matters here
    for got in (worker.one_chunk("diagonal", sigma_convention="authors"),
                jax_results["one_chunk_authors"]):
        assert got["m_star"] == want["m_star"]
        np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=1e-5)


@pytest.fixture(scope="module")
def tf_trajectories():
    return worker.trajectories()


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_jax_fit_takes_the_tensorflow_updates(jax_results, tf_trajectories, mode):
    jx, tf_ = jax_results["trajectories"][mode], tf_trajectories[mode]
    # one jitted step for all 72 chunks, whatever they decided (jnp.where, no retrace)
    assert jx["jit_compile"] and jx["traces"] == 1
    sizes = tf_["history"]["batch_size_per_update"]
    assert max(sizes) > worker.M0 and tf_["accumulated"] > 0  # batches grew, one is half-grown
    assert jx["iterations"] == tf_["iterations"]
    assert jx["accumulated"] == tf_["accumulated"]
    assert jx["history"]["updates"] == tf_["history"]["updates"]
    np.testing.assert_allclose(jx["history"]["batch_size_per_update"], sizes, rtol=1e-6)
    np.testing.assert_allclose(jx["history"]["m_star"], tf_["history"]["m_star"])
    for a, b in zip(jx["weights"], tf_["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)
    for a, b in zip(jx["optimizer"], tf_["optimizer"], strict=True):  # same variable layout
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _close(got, want, rtol=2e-5):
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("dropout", ["0.0", "0.3"])
def test_jax_batched_diagonal_sums_equal_jacrev(jax_results, dropout):
    """sum_n g_n and sum_n g_n**2 of the batched pass (ba_sum_grad_squared_jax.py; its scan
    over examples and its batched einsum) against jax.jacrev's per-example gradients of one
    batched forward pass (the same dropout masks), with an L2 term in every example's loss;
    the seed state advances once."""
    run = jax_results["batched_sums"][f"dropout_{dropout}"]
    for key in ("grad_sum", "sq_sum"):
        _close(run["batched"][key], run["jacrev"][key])
        _close(run["batched_einsum"][key], run["jacrev"][key])
        if dropout == "0.0":  # the per-example path draws other masks under dropout
            _close(run["per_example"][key], run["jacrev"][key])
    if dropout == "0.0":
        assert run["batched"]["loss_sum"] == pytest.approx(run["per_example"]["loss_sum"], 1e-6)
    # one seed generator state (dropout's) where there is dropout, none without
    assert len(run["seed_before"]) == (dropout == "0.3")
    for path in ("batched", "batched_einsum", "per_example"):
        steps = [np.subtract(a, b).tolist()
                 for a, b in zip(run[path]["state_after"], run["seed_before"], strict=True)]
        assert steps == [[0, 1]] * len(steps)


@pytest.mark.slow
def test_jax_batched_diagonal_sums_equal_tensorflow_brute_force(jax_results):
    """The same network and weights on TensorFlow: per-example gradients one by one (tape)."""
    from tests.optimizers.test_ba_sum_grad_squared import brute_force

    x, y = worker.conv_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    want_sum, want_sq = brute_force(worker.conv_net(0.0), x, y, loss)
    run = jax_results["batched_sums"]["dropout_0.0"]["batched"]
    _close(run["grad_sum"], want_sum, rtol=1e-4)
    _close(run["sq_sum"], want_sq, rtol=1e-4)


@pytest.mark.slow
def test_jax_save_mid_batch_and_continue_equals_uninterrupted(jax_results):
    saved = jax_results["save"]
    assert saved["classes"] == ["BAModel", "BAMomentum"]
    assert saved["before"]["iterations"] >= 1 and saved["before"]["accumulated"] > 0
    assert saved["after_load"]["optimizer"] == saved["before"]["optimizer"]
    assert saved["loaded"]["iterations"] == saved["reference"]["iterations"]
    for a, b in zip(saved["loaded"]["weights"], saved["reference"]["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_jax_non_finite_loss_fails_naming_the_update(jax_results):
    assert "non-finite loss or gradient while growing the batch of update" in (
        jax_results["non_finite"])


@pytest.mark.slow
def test_jax_training_imports_no_tensorflow(jax_results):
    """Import, build and fit (Keras' own `model.save` imports TensorFlow when installed)."""
    assert jax_results["tensorflow_imported"] is False


def test_torch_backend_gets_an_error_naming_the_supported_backends(monkeypatch):
    from keras_largebatch.optimizers import BAModel, BAMomentum

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(RuntimeError, match=r"supported backends: tensorflow, jax"):
        BAMomentum()
    with pytest.raises(RuntimeError, match=r"BAModel .*supported backends: tensorflow, jax"):
        BAModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
