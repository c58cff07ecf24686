"""NoiseScaleOptimizer (the gradient noise scale under plain model.fit) on TensorFlow (here)
and JAX (a subprocess: Keras fixes its backend per process), against NumPy: the update is the
mean of the accumulated batches' gradients, and the estimates lie within a few standard errors
of the exact |G|^2 and tr(Sigma)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_largebatch.goodput.optimizer import NoiseScaleLogger, NoiseScaleOptimizer
from tests.backend_env import ROOT, backend_env, require_backend

from . import fit_worker
from .brute_force import exact_statistics, per_example_grads, problem_arrays, standard_errors


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = {"tensorflow": fit_worker.run()}
    require_backend("jax")
    path = tmp_path_factory.mktemp("jax") / "out.json"
    proc = subprocess.run([sys.executable, "-m", "tests.goodput.fit_worker", str(path)],
                          cwd=ROOT, env=backend_env("jax", ROOT), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out["jax"] = json.loads(path.read_text())
    return out


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_batches_make_one_update_with_their_mean_gradient(results, backend):
    got = results[backend]
    assert got["backend"] == backend
    x, y, w, b = problem_arrays()
    g = per_example_grads(x[:128], y[:128], w, b).mean(axis=0)   # both batches at w0
    np.testing.assert_allclose(np.array(got["update"]["kernel"]).ravel(),
                               w.ravel() - 0.1 * g[:7840], atol=2e-6)
    np.testing.assert_allclose(got["update"]["bias"], b - 0.1 * g[7840:], atol=2e-6)
    assert got["update"]["iterations"] == 1                       # updates, not batches


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_estimates_match_brute_force(results, backend):
    got = results[backend]
    x, y, w, b = problem_arrays()
    per_example = per_example_grads(x, y, w, b)
    exact_g2, exact_trace = exact_statistics(per_example)
    se_g2, se_trace = standard_errors(per_example, 128, 2, estimates=200)
    assert got["unchanged"]
    assert abs(got["estimates"]["grad_sqr"] - exact_g2) < 4 * se_g2
    assert abs(got["estimates"]["grad_trace"] - exact_trace) < 4 * se_trace
    assert got["estimates"]["b_simple"] == pytest.approx(
        got["estimates"]["grad_trace"] / got["estimates"]["grad_sqr"])


def test_logger_history_and_a_saved_model_round_trip(tmp_path):
    x, y, w, b = problem_arrays(512)
    model, opt = fit_worker._model(w, b, 0.05)
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0,
                        callbacks=[NoiseScaleLogger()])
    assert len(history.history["b_simple"]) == 2
    assert int(opt.iterations.numpy()) == 2 * 512 // 128
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, NoiseScaleOptimizer)
    assert loaded.optimizer.get_config() == opt.get_config()
    assert loaded.optimizer.noise_scale() == pytest.approx(opt.noise_scale())


def test_bad_settings(two_cpu_strategy):
    from keras_largebatch.errors import UserInputError

    with pytest.raises(UserInputError, match="at least 2 batches"):
        NoiseScaleOptimizer(keras.optimizers.SGD(0.1), batch_size=64, accumulation_steps=1)
    with pytest.raises(ValueError, match="on the inner optimizer"):
        NoiseScaleOptimizer(keras.optimizers.SGD(0.1), batch_size=64, clipnorm=1.0)
    x, y, w, b = problem_arrays(256)
    with two_cpu_strategy.scope():
        model, _ = fit_worker._model(w, b, 0.05)
    with pytest.raises(ValueError, match="replicas is not supported"):
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
