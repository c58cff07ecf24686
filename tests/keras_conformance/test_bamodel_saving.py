"""Issue 1 and 27: a BAModel saved to `.keras` mid-training continues exactly after loading, in
a fresh process that imports only `keras_largebatch` (the public home,
`keras_largebatch.optimizers.BAModel`, is registered by that import on TensorFlow and JAX);
the README's BAModel snippet runs as written.

Keras' answer for models with state in their compile arguments is `get_compile_config` /
`compile_from_config`; the reference is the same model trained without interruption, here on
TensorFlow. The model is saved by this (TensorFlow) process; a fresh interpreter per backend
loads it with `import keras_largebatch` and `import keras` only, trains the remaining chunks
and writes back what it saw. JAX runs the same optimizer in float32 without `jax_enable_x64`
(BUILD_NOTES "BAModel on JAX"), hence its tolerances.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.backend_env import backend_env, require_backend

pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("the saving process runs on TensorFlow", allow_module_level=True)

from keras_largebatch.optimizers import BAModel, BAMomentum  # noqa: E402

M0 = 16
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in the fresh process: nothing of keras_largebatch is imported but the package itself.
LOAD_AND_CONTINUE = textwrap.dedent("""
    import sys
    import numpy as np
    import keras_largebatch
    import keras

    path, data, out = sys.argv[1:]
    model = keras.saving.load_model(path)
    opt = model.optimizer
    as_np = keras.ops.convert_to_numpy
    loaded = {"class": np.array([type(model).__module__ + "." + type(model).__name__,
                                 type(opt).__name__]),
              "iterations": as_np(opt.iterations), "accumulated": as_np(opt.accumulated_count)}
    loaded.update({f"opt_{i}": as_np(v) for i, v in enumerate(opt.variables)})
    d = np.load(data)
    model.fit(d["x"], d["y"], batch_size=int(d["m0"]), shuffle=False, epochs=1, verbose=0)
    loaded["iterations_after"] = as_np(opt.iterations)
    loaded.update({f"w_{i}": w for i, w in enumerate(model.get_weights())})
    np.savez(out, **loaded)
""")


def data(n=320, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x @ rng.normal(size=(d, 1)) + 2.0 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def fresh_model():
    keras.utils.set_random_seed(3)
    net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="tanh"),
                            keras.layers.Dense(1)])
    model = BAModel(net)
    model.compile(optimizer=BAMomentum(learning_rate=0.3, momentum=0.9, min_increment=M0,
                                       max_batch_size=256, loss_floor=8.0),
                  loss=keras.losses.MeanSquaredError())
    return model


def fit_chunks(model, x, y):
    model.fit(x, y, batch_size=M0, shuffle=False, epochs=1, verbose=0)


@pytest.fixture(scope="module")
def saved_mid_training(tmp_path_factory):
    """(path of the .keras file, its optimizer state, the reference, the remaining data)."""
    tmp = tmp_path_factory.mktemp("ba_saving")
    x, y = data()
    first, second = slice(0, 7 * M0), slice(7 * M0, 20 * M0)  # N = 7 chunks, then M = 13

    reference = fresh_model()
    fit_chunks(reference, x[first], y[first])
    fit_chunks(reference, x[second], y[second])

    model = fresh_model()
    fit_chunks(model, x[first], y[first])
    saved = {
        "iterations": int(model.optimizer.iterations.numpy()),
        "accumulated": float(model.optimizer.accumulated_count.numpy()),
        "variables": [np.asarray(v) for v in model.optimizer.variables],
    }
    assert saved["iterations"] >= 1 and saved["accumulated"] > 0  # mid-batch, after updates
    path = tmp / "ba.keras"
    model.save(str(path))
    np.savez(tmp / "rest.npz", x=x[second], y=y[second], m0=M0)
    return path, saved, reference, tmp / "rest.npz"


@pytest.mark.parametrize("backend, atol", [
    ("tensorflow", 1e-7),
    pytest.param("jax", 2e-5, marks=pytest.mark.slow),  # float32 state (module docstring)
])
def test_save_mid_training_and_continue_equals_uninterrupted(saved_mid_training, tmp_path,
                                                             backend, atol):
    path, saved, reference, rest = saved_mid_training
    if backend != "tensorflow":
        require_backend(backend)
    out = tmp_path / "loaded.npz"
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_CONTINUE, str(path), str(rest), str(out)],
        cwd=tmp_path, env=backend_env(backend, ROOT), capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = np.load(out)

    assert list(loaded["class"]) == ["keras_largebatch.optimizers.ba_model.BAModel",
                                     "BAMomentum"]
    assert int(loaded["iterations"]) == saved["iterations"]
    assert float(loaded["accumulated"]) == saved["accumulated"]
    assert len(saved["variables"]) == len([k for k in loaded.files if k.startswith("opt_")])
    for i, expected in enumerate(saved["variables"]):
        np.testing.assert_allclose(loaded[f"opt_{i}"], expected, rtol=0 if atol < 1e-6 else 1e-6)

    assert int(loaded["iterations_after"]) == int(reference.optimizer.iterations.numpy())
    weights = reference.get_weights()
    assert len(weights) == len([k for k in loaded.files if k.startswith("w_")])
    for i, expected in enumerate(weights):
        np.testing.assert_allclose(loaded[f"w_{i}"], expected, rtol=0, atol=atol)


def readme_snippet() -> str:
    text = (Path(ROOT) / "README.md").read_text()
    section = text[text.index("### BA-Momentum under `model.fit`"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_trains_saves_and_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippet saves ba.keras in the current folder
    namespace = {}
    code = readme_snippet().replace("epochs=2)", "epochs=2, verbose=0)")
    exec(compile(code, "README.md", "exec"), namespace)
    logs = namespace["history"].history
    assert len(logs["loss"]) == 2 and np.isfinite(logs["loss"]).all()
    chunks = 1024 // 32  # per epoch: fit(batch_size=min_increment) feeds one chunk per step
    for updates, size in zip(logs["updates"], logs["batch_size_per_update"]):
        assert 1 <= updates <= chunks  # an update needs at least one chunk (Algorithm 1)
        assert 32 <= size <= 1024  # each applied batch is whole chunks of m0 = 32
    loaded = keras.saving.load_model(tmp_path / "ba.keras")
    assert isinstance(loaded, BAModel) and isinstance(loaded.optimizer, BAMomentum)
    assert int(loaded.optimizer.iterations.numpy()) == sum(int(u) for u in logs["updates"])
