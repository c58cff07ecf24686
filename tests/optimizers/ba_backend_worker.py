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


def conv_net(dropout=0.0):
    """ba_sum_grad_squared's test network (strides, padding, dilation, no bias, a Dense on
    positions, a shared Dense called twice, dropout, an L2 term) with NumPy weights."""
    import keras

    conv = keras.layers.Conv2D
    inputs = keras.Input((12, 12, 2))
    x = conv(4, 3, padding="same", activation="tanh",
             kernel_regularizer=keras.regularizers.L2(1e-2))(inputs)
    x = conv(5, 3, strides=2, padding="valid", activation="relu")(x)  # 5x5
    x = conv(3, 2, strides=2, padding="same", use_bias=False)(x)  # 3x3
    x = conv(4, 3, dilation_rate=2, padding="same", activation="elu")(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Reshape((9, 4))(x)
    x = keras.layers.Dense(3, activation="tanh")(x)
    x = keras.layers.Flatten()(x)
    shared = keras.layers.Dense(27, activation="sigmoid")
    outputs = keras.layers.Dense(5)(shared(shared(x)))
    model = keras.Model(inputs, outputs)
    model.set_weights(initial_weights([w.shape for w in model.get_weights()], seed=3))
    return model


def conv_data(n=6):
    rng = np.random.default_rng(1)
    return (rng.normal(size=(n, 12, 12, 2)).astype("float32"),
            rng.integers(0, 5, size=(n,)).astype("int32"))


def batched_sums() -> dict:
    """JAX only: "diagonal" chunk sums of `conv_net` from the batched pass (its CPU form, a scan
    over examples, and its accelerator form, one batched einsum), from the per-example path,
    and from `jax.jacrev` of the per-example losses of one batched forward pass (the same
    dropout masks), with and without dropout; lists of float64 arrays per variable."""
    import functools

    import jax
    import keras

    from keras_largebatch.optimizers import ba_covariance_jax
    from keras_largebatch.optimizers.ba_covariance_jax import chunk_statistics

    batched = ba_covariance_jax.batched_sum_grad_squared

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    x, y = conv_data()
    out = {}
    for dropout in (0.0, 0.3):
        model = conv_net(dropout)
        trainable = [v.value for v in model.trainable_variables]
        state = [v.value for v in model.non_trainable_variables]

        def per_example(values, model=model, state=state):
            y_pred, _ = model.stateless_call(values, state, x, training=True)
            reg = sum(r(v) for v, r in zip(values, [getattr(w, "regularizer", None)
                                                    for w in model.trainable_variables]) if r)
            return loss(y, y_pred) + reg

        jac = [np.asarray(j, np.float64) for j in jax.jacrev(per_example)(trainable)]
        record = {"jacrev": {"grad_sum": [j.sum(0).tolist() for j in jac],
                             "sq_sum": [(j**2).sum(0).tolist() for j in jac]}}
        for name, per, scan in (("batched", False, True), ("batched_einsum", False, False),
                                ("per_example", True, None)):
            ba_covariance_jax.batched_sum_grad_squared = functools.partial(batched, scan=scan)
            try:
                stats, after = chunk_statistics("diagonal", model, loss, trainable, state, x, y,
                                                per_example=per)
            finally:
                ba_covariance_jax.batched_sum_grad_squared = batched
            record[name] = {k: [np.asarray(t, np.float64).tolist() for t in stats[k]]
                            for k in ("grad_sum", "sq_sum")}
            record[name]["loss_sum"] = float(stats["loss_sum"])
            record[name]["state_after"] = [np.asarray(a, np.int64).tolist() for a in after]
        record["seed_before"] = [np.asarray(b, np.int64).tolist() for b in state]
        out[f"dropout_{dropout}"] = record
    return out


def main(argv):
    out_path, tmp_dir = argv[1], argv[2] if len(argv) > 2 else "."
    import keras

    results = {"backend": keras.backend.backend(),
               "one_chunk": {c: one_chunk(c) for c in ("projection", "diagonal", "full")},
               "one_chunk_authors": one_chunk("diagonal", sigma_convention="authors"),
               "trajectories": trajectories(),
               "batched_sums": batched_sums()}
    # before saving: Keras' own `model.save` imports TensorFlow on JAX when it is installed
    results["tensorflow_imported"] = "tensorflow" in sys.modules
    results["save"] = save_and_continue(tmp_dir)
    results["non_finite"] = non_finite()
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv)
