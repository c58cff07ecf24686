"""One BAModel problem, run on whichever Keras backend this process has (test_ba_jax.py).

    KERAS_BACKEND=jax python -m tests.optimizers.ba_backend_worker OUT.json [TMP_DIR]

Keras fixes its backend per process, so test_ba_jax.py runs the TensorFlow side in the pytest
session and this module's `main` in a JAX subprocess; both call `train` on the same data and
the same initial weights (NumPy, since Keras' initialisers draw different numbers per
backend) and compare the JSON records. Imports no backend library at module level.
"""

from __future__ import annotations

import json
import sys

import numpy as np

M0 = 16
D = 3
LR = 0.05
FLOOR = 2.5  # S* near the noise floor (1.5^2): batches grow from 16 up to the cap of 128
ONE_CHUNK_FLOOR = 4.5  # after one chunk (s ~ 5.2) this puts m* strictly inside (1, 128)
SAVE_FLOOR = 3.5  # 2 updates in the first 7 chunks, then a batch of 80 half-grown


def data(n=24 * M0, seed=0):
    """Least squares with label noise: y = x w + 1.5 noise (batches grow as the loss falls)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    y = (x @ rng.normal(size=(D, 1)) + 1.5 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def initial_weights(shapes, seed=7):
    rng = np.random.default_rng(seed)
    return [(0.5 * rng.normal(size=s)).astype("float32") for s in shapes]


def build(covariance="projection", hidden=4, momentum=0.9, loss_floor=FLOOR,
          sigma_convention="paper"):
    """A BAModel over Dense(hidden, tanh) -> Dense(1) (or one Dense when hidden=0)."""
    import keras

    from keras_largebatch.optimizers import BAModel, BAMomentum

    layers = [keras.Input((D,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="tanh"))
    net = keras.Sequential([*layers, keras.layers.Dense(1)])
    net.set_weights(initial_weights([w.shape for w in net.get_weights()]))
    model = BAModel(net)
    model.compile(optimizer=BAMomentum(learning_rate=LR, momentum=momentum, min_increment=M0,
                                       max_batch_size=128, loss_floor=loss_floor,
                                       covariance=covariance,
                                       sigma_convention=sigma_convention),
                  loss=keras.losses.MeanSquaredError())
    return model


def fit(model, x, y, epochs=1):
    return model.fit(x, y, batch_size=M0, shuffle=False, epochs=epochs, verbose=0).history


def record(model, history) -> dict:
    opt = model.optimizer
    return {
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "iterations": int(np.asarray(opt.iterations)),
        "accumulated": float(np.asarray(opt.accumulated_count)),
        "weights": [np.asarray(w, np.float64).tolist() for w in model.get_weights()],
        "optimizer": [np.asarray(v, np.float64).tolist() for v in opt.variables],
    }


def one_chunk(covariance, hidden=0, sigma_convention="paper") -> dict:
    """m*, mu, sigma, s after the first chunk of `data()` (no update yet, or the first one)."""
    x, y = data()
    model = build(covariance, hidden=hidden, loss_floor=ONE_CHUNK_FLOOR,
                  sigma_convention=sigma_convention)
    fit(model, x[:M0], y[:M0])
    opt = model.optimizer
    return {key: float(np.asarray(var)) for key, var in
            (("m_star", opt._m_star), ("mu", opt._mu), ("sigma", opt._sigma),  # noqa: SLF001
             ("s", opt._state), ("iterations", opt.iterations))}  # noqa: SLF001


def trajectories() -> dict:
    """3 epochs of 24 chunks per mode; on JAX also how often the train step was traced."""
    import keras

    x, y = data()
    out = {}
    for covariance in ("projection", "diagonal", "full"):
        model = build(covariance)
        traces = _count_traces() if keras.backend.backend() == "jax" else None
        out[covariance] = record(model, fit(model, x, y, epochs=3))
        if traces is not None:
            out[covariance]["traces"] = traces[0]
            out[covariance]["jit_compile"] = bool(model.jit_compile)
    return out


def _count_traces() -> list:
    """[number of calls of the Python JAX train step]: it runs only when jax.jit traces it."""
    from keras_largebatch.optimizers import ba_model_jax

    step = getattr(ba_model_jax.jax_train_step, "__wrapped__", ba_model_jax.jax_train_step)
    counter = [0]

    def counted(*args):
        counter[0] += 1
        return step(*args)

    counted.__wrapped__ = step
    ba_model_jax.jax_train_step = counted
    return counter


def save_and_continue(tmp_dir) -> dict:
    """7 chunks, save to .keras, load, 13 more chunks; and the same 20 chunks uninterrupted."""
    import keras

    x, y = data()
    first, second = slice(0, 7 * M0), slice(7 * M0, 20 * M0)
    reference = build(loss_floor=SAVE_FLOOR)
    fit(reference, x[first], y[first])
    fit(reference, x[second], y[second])
    model = build(loss_floor=SAVE_FLOOR)
    fit(model, x[first], y[first])
    before = record(model, {})
    path = f"{tmp_dir}/ba.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after_load = record(loaded, {})
    fit(loaded, x[second], y[second])
    return {"before": before, "after_load": after_load, "loaded": record(loaded, {}),
            "reference": record(reference, {}),
            "classes": [type(loaded).__name__, type(loaded.optimizer).__name__]}


def non_finite() -> str:
    """The error a NaN input raises in the middle of a batch."""
    x, y = data()
    x = x.copy()
    x[M0 + 3, 0] = np.nan
    model = build()
    try:
        fit(model, x[: 2 * M0], y[: 2 * M0])
    except Exception as error:  # noqa: BLE001  (the backend's wrapper of the callback's error)
        return f"{type(error).__name__}: {error}"
    return "no error"


def main(argv):
    out_path, tmp_dir = argv[1], argv[2] if len(argv) > 2 else "."
    import keras

    results = {"backend": keras.backend.backend(),
               "one_chunk": {c: one_chunk(c) for c in ("projection", "diagonal", "full")},
               "one_chunk_authors": one_chunk("diagonal", sigma_convention="authors"),
               "trajectories": trajectories()}
    # before saving: Keras' own `model.save` imports TensorFlow on JAX when it is installed
    results["tensorflow_imported"] = "tensorflow" in sys.modules
    results["save"] = save_and_continue(tmp_dir)
    results["non_finite"] = non_finite()
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv)
