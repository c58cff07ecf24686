"""A problem whose per-example gradients are exact and independent of any backend: softmax
regression (one Dense(10) on flattened images) on the first N real Fashion-MNIST training
images, with fixed NumPy weights. Imports no backend library (the JAX worker uses it too).

    x, y, w, b = problem_arrays()
    per_example = per_example_grads(x, y, w, b)       # [N, 784 * 10 + 10], d CE / d(W, b)
    exact_g2, exact_trace = exact_statistics(per_example)
"""

from __future__ import annotations

import numpy as np

N = 2048


def problem_arrays(n: int = N):
    from keras_largebatch.data.sources import fashion_mnist

    source = fashion_mnist()
    images, labels = source.train_arrays
    x = ((images[:n].astype(np.float32) / 255.0 - source.mean[0]) / source.std[0])
    x = x.reshape(n, -1).astype(np.float32)
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.01, size=(784, 10)).astype(np.float32)
    return x, labels[:n].astype(np.int64), w, np.zeros(10, np.float32)


def per_example_grads(x, y, w, b):
    """d CE / d(W, b) for each example: x_i (p_i - e_y)^T and p_i - e_y, flattened."""
    z = x.astype(np.float64) @ w + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return np.concatenate([(x[:, :, None] * p[:, None, :]).reshape(len(y), -1), p], axis=1)


def exact_statistics(per_example):
    """|G|^2 and tr(Sigma) of the empirical distribution (sampling with replacement)."""
    g = per_example.mean(axis=0)
    return float(g @ g), float(((per_example - g) ** 2).sum(axis=1).mean())


def standard_errors(per_example, batch: int, parts: int, estimates: int, draws: int = 400,
                    seed: int = 3):
    """Standard errors of the mean of `estimates` one-batch (|G|^2, tr(Sigma)) estimates."""
    from keras_largebatch.goodput.noise_scale import estimates_from_parts

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        chunks = per_example[rng.integers(0, len(per_example), size=batch)]
        chunks = chunks.reshape(parts, -1, per_example.shape[1]).mean(axis=1)
        whole = chunks.mean(axis=0)
        out.append(estimates_from_parts(float((chunks ** 2).sum(axis=1).mean()),
                                        float(whole @ whole), batch, parts))
    return np.array(out).std(axis=0, ddof=1) / np.sqrt(estimates)
