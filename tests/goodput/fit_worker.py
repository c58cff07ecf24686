"""NoiseScaleOptimizer under plain model.fit on whichever Keras backend this process has.

    KERAS_BACKEND=jax python -m tests.goodput.fit_worker OUT.json

Two measurements on the brute-force problem (brute_force.py), printed as JSON:
- "update": the weights after two batches of 64 with SGD(lr=0.1) inside the wrapper (one update
  with the mean of the two batches' gradients, both taken at the initial weights);
- "estimates": |G|^2 and tr(Sigma) after 400 batches of 64 drawn with replacement, LR 0.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from tests.goodput.brute_force import problem_arrays

BATCH = 64


def _model(w, b, lr, smoothing=0.999):
    import keras

    from keras_largebatch.goodput.optimizer import NoiseScaleOptimizer

    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    model.layers[0].set_weights([w, b])
    opt = NoiseScaleOptimizer(keras.optimizers.SGD(lr), batch_size=BATCH, smoothing=smoothing)
    model.compile(optimizer=opt,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, opt


def run() -> dict:
    import keras

    x, y, w, b = problem_arrays()
    model, opt = _model(w, b, 0.1)
    model.fit(x[:2 * BATCH], y[:2 * BATCH], batch_size=BATCH, epochs=1, shuffle=False,
              verbose=0)
    update = {"kernel": model.layers[0].get_weights()[0].tolist(),
              "bias": model.layers[0].get_weights()[1].tolist(),
              "iterations": int(keras.ops.convert_to_numpy(opt.iterations))}

    model, opt = _model(w, b, 0.0, smoothing=0.99999)
    idx = np.random.default_rng(2).integers(0, len(y), size=400 * BATCH)
    model.fit(x[idx], y[idx], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return {"backend": keras.backend.backend(), "update": update,
            "estimates": opt.noise_scale(),
            "unchanged": bool(np.array_equal(model.layers[0].get_weights()[0], w))}


if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        json.dump(run(), f)
