"""Sums of squared per-example gradients in one batched backward pass (BackPACK's SumGradSquared).

BA-Momentum's "diagonal" mode (ba_covariance.py) needs, per parameter i, only
sum_n g_n[i] and sum_n g_n[i]**2 over the examples n of a chunk. In a network whose examples
do not interact, the gradient of example n's loss l_n with respect to one layer's weights
depends only on that layer's input a_n and on dz_n = dl_n/dz_n, the gradient of l_n with
respect to the layer's pre-activation output z_n. One forward pass that records (a, z) for
every covered layer and one backward pass of L = sum_n l_n to the z's give all of them
(dL/dz_n = dl_n/dz_n because z_n reaches no other example's loss): no loop over examples and
no per-example backward pass (TensorFlow's vectorised per-example filter gradient falls back
to a while_loop over Conv2DBackpropFilter).

Dense, z_n = a_n W + b, rank-2 input (a_n: [d_in]), elementwise squares:

    g_n(W) = a_n^T dz_n       sum_n g_n(W)**2 = (a**2)^T (dz**2)   [d_in, d_out]: one matmul
    g_n(b) = dz_n             sum_n g_n(b)**2 = sum_n dz_n**2

  (per-example gradients are never formed). With positions t (a_n: [T, d_in]):
  g_n(W) = sum_t a_{n,t}^T dz_{n,t} by one batched matmul, g_n(b) = sum_t dz_{n,t}.

Conv2D, z_n = conv(a_n, K) + b: U_n = the unfolded input (im2col), one row per output
position p with the receptive field (kh, kw, c_in) that p sees under the layer's strides,
dilation and padding, so that z_n = U_n K + b and

    g_n(K) = U_n^T dz_n   [kh*kw*c_in, c_out], batched matmuls over n;   g_n(b) = sum_p dz_{n,p}

and sum_n g_n(K)**2 from these. U_n is never formed: its columns for kernel offset (i, j) are
the strided input shifted by (i, j), so g_n(K)[i, j] = shift_ij(a_n)^T dz_n, one batched
matmul per offset (on the seed-002 CNN 1.3-1.9x faster than `tf.image.extract_patches` and one
matmul). A layer called several times (shared weights) adds its
per-example gradients over the calls before squaring. Mean gradients: sum_n g_n of the same
quantities. Inputs and output gradients are cast to float32 (mixed precision).

Covered: `keras.layers.Dense` and `keras.layers.Conv2D` with Keras' own `call` (no LoRA, no
quantisation, groups = 1, channels_last; any strides, padding, dilation), and layers without
trainable weights, which must treat examples independently (every Keras layer without weights
does). `uncovered_layers` names the rest: layers that own trainable weights of any other kind
(LayerNormalization, Embedding, DepthwiseConv2D, custom layers, ...) and trainable
BatchNormalization (GhostBatchNormalization included), whose training-mode output couples the
examples, so that its per-example gradients have no layer-local formula.

Reference: Dangel, Kunstner, Hennig, "BackPACK: Packing more into backprop" (ICLR 2020), the
SumGradSquared and Variance extensions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable

import keras

from keras_largebatch.optimizers.ba_math import tf  # TensorFlow, imported on first use

_COVERED = (keras.layers.Dense, keras.layers.Conv2D)
_LOCK = threading.Lock()
_INSTALLED: dict[int, list] = {}  # id(layer) -> [uses, saved call, saved activation]
_ACTIVE = threading.local()  # this thread's recorder: {id(layer): [(a, z), ...]}


@dataclasses.dataclass
class BatchedSums:
    """One chunk's sums over its examples n: loss_sum = sum_n l_n; grad_sum / sq_sum:
    sum_n g_n and sum_n g_n**2 per variable (float32); y_pred: the model outputs."""

    loss_sum: tf.Tensor
    grad_sum: list
    sq_sum: list
    y_pred: object


def _covered(layer) -> bool:
    cls = next((c for c in _COVERED if isinstance(layer, c)), None)
    if cls is None or type(layer).call is not cls.call:
        return False
    if getattr(layer, "lora_enabled", False) or layer.dtype_policy.quantization_mode:
        return False
    if cls is keras.layers.Conv2D:
        # channels_first: TensorFlow has no NCHW convolution on CPU to test it against.
        return (layer.groups == 1 and layer.data_format == "channels_last"
                and type(layer).convolution_op is cls.convolution_op)
    return True


def uncovered_layers(model: keras.Model, variables) -> list[str]:
    """'name (Class)' of each layer whose per-example gradients this module cannot compute.

    Empty when every variable in `variables` belongs to a covered layer and no trainable
    BatchNormalization couples the examples (module docstring).
    """
    wanted = {id(v) for v in variables}
    owned, names = set(), []
    for layer in model._flatten_layers(include_self=True, recursive=True):  # noqa: SLF001
        own = {id(v) for v in layer._trainable_variables if id(v) in wanted}  # noqa: SLF001
        owned |= own
        coupled = isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        if coupled or (own and not _covered(layer)):
            names.append(f"{layer.name} ({type(layer).__name__})")
    missing = [v.path for v in variables if id(v) not in owned]
    if missing:
        names.append(f"variables of no layer: {', '.join(missing)}")
    return names


def layers_owning(model: keras.Model, variables) -> list:
    """The layers of `model` (itself included) that own one of `variables` directly."""
    wanted = {id(v) for v in variables}
    return [layer for layer in model._flatten_layers(include_self=True, recursive=True)  # noqa: SLF001
            if any(id(v) in wanted for v in layer._trainable_variables)]  # noqa: SLF001


def _install(layer):
    """Wrap `layer`'s call (records its input) and activation (records z) for recorders."""
    key = id(layer)
    call, activation = layer.call, layer.activation

    def recording_call(inputs, *args, **kwargs):
        record = getattr(_ACTIVE, "record", None)
        if record is not None and key in record:
            record[key].append([inputs, None])
        return call(inputs, *args, **kwargs)

    def recording_activation(z):
        record = getattr(_ACTIVE, "record", None)
        if record is not None and key in record and record[key][-1][1] is None:
            shift = getattr(_ACTIVE, "shift", None)
            if shift is not None:  # z + 0, differentiated for dL/dz (ba_sum_grad_squared_jax.py)
                z = shift(key, len(record[key]) - 1, z)
            record[key][-1][1] = z
        return z if activation is None else activation(z)

    # Instance attributes, set past Keras' tracking and removed in `_recording`.
    layer.__dict__["call"] = recording_call
    layer.__dict__["activation"] = recording_activation
    return activation


@contextlib.contextmanager
def _recording(layers, shift=None):
    """Inside, each call of a layer in `layers` in this thread appends [input, z] to the
    yielded record {id(layer): [...]}. Wrappers are shared by threads (MirroredStrategy
    replicas) and removed when the last recorder leaves. `shift(id(layer), call index, z)`,
    when given, replaces z (recorded and passed to the activation)."""
    with _LOCK:
        for layer in layers:
            entry = _INSTALLED.setdefault(id(layer), [0, None])
            if entry[0] == 0:
                entry[1] = _install(layer)
            entry[0] += 1
    _ACTIVE.record = {id(layer): [] for layer in layers}
    _ACTIVE.shift = shift
    try:
        yield _ACTIVE.record
    finally:
        _ACTIVE.record = _ACTIVE.shift = None
        with _LOCK:
            for layer in layers:
                entry = _INSTALLED[id(layer)]
                entry[0] -= 1
                if entry[0] == 0:
                    del layer.__dict__["call"]
                    layer.__dict__["activation"] = entry[1]
                    del _INSTALLED[id(layer)]


def _f32(t):
    return tf.cast(t, tf.float32)


def _shifted_inputs(layer, a, dz):
    """The input seen by each kernel offset (i, j), one [n, positions, c_in] tensor each.

    Offset (i, j) of output position (y, x) reads input (y s_h + i d_h, x s_w + j d_w) of the
    input padded as the convolution pads it ("same": pad_total = max((out - 1) s + (k - 1) d
    + 1 - size, 0), the smaller half before). Together these are the unfolded input U, one
    block of kh*kw columns at a time, without forming U (faster than extract_patches here).
    """
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    size, out = tf.shape(a)[1:3], tf.shape(dz)[1:3]
    if layer.padding == "same":
        total = tf.maximum((out - 1) * [sh, sw] + [(kh - 1) * dh + 1, (kw - 1) * dw + 1] - size, 0)
        a = tf.pad(a, [[0, 0], [total[0] // 2, total[0] - total[0] // 2],
                       [total[1] // 2, total[1] - total[1] // 2], [0, 0]])
    n, c_in = tf.shape(a)[0], tf.shape(a)[3]
    return [
        tf.reshape(a[:, i * dh : i * dh + (out[0] - 1) * sh + 1 : sh,
                     j * dw : j * dw + (out[1] - 1) * sw + 1 : sw, :], [n, -1, c_in])
        for i in range(kh) for j in range(kw)
    ]


def _per_example(layer, a, dz, n):
    """([g_n of each kernel block], g_n(bias) [n, units]) of one call of `layer`: Dense one
    block [n, d_in, d_out], Conv2D kh*kw blocks [n, c_in, c_out] (kernel offsets row-major)."""
    a, dz = _f32(a), _f32(dz)
    dz3 = tf.reshape(dz, [n, -1, tf.shape(dz)[-1]])
    if isinstance(layer, keras.layers.Dense):
        blocks = [tf.reshape(a, [n, -1, tf.shape(a)[-1]])]
    else:
        blocks = _shifted_inputs(layer, a, dz)
    return [tf.matmul(u, dz3, transpose_a=True) for u in blocks], tf.reduce_sum(dz3, axis=1)


def _layer_sums(layer, calls, n):
    """[(sum_n g_n, sum_n g_n**2) for the kernel, and for the bias] of one covered layer."""
    kernel = layer._kernel  # noqa: SLF001
    units = kernel.shape[-1]
    if not calls:  # not used in this pass: zero gradient
        zk, zb = tf.zeros(kernel.shape), tf.zeros([units])
        return [(zk, zk), (zb, zb)]
    if isinstance(layer, keras.layers.Dense) and len(calls) == 1 and calls[0][0].shape.rank == 2:
        a, dz = _f32(calls[0][0]), _f32(calls[0][1])
        return [
            (tf.matmul(a, dz, transpose_a=True),
             tf.matmul(tf.square(a), tf.square(dz), transpose_a=True)),
            (tf.reduce_sum(dz, axis=0), tf.reduce_sum(tf.square(dz), axis=0)),
        ]
    per_call = [_per_example(layer, a, dz, n) for a, dz in calls]
    blocks = [tf.add_n(list(b)) for b in zip(*[k for k, _ in per_call])]  # summed over calls
    bias = tf.add_n([b for _, b in per_call])
    sums = [tf.reduce_sum(g, axis=0) for g in blocks]
    squares = [tf.reduce_sum(tf.square(g), axis=0) for g in blocks]
    return [(tf.reshape(tf.stack(sums), kernel.shape), tf.reshape(tf.stack(squares), kernel.shape)),
            (tf.reduce_sum(bias, axis=0), tf.reduce_sum(tf.square(bias), axis=0))]


def batched_sum_grad_squared(
    model: keras.Model, per_example_loss: Callable, x, variables, n
) -> BatchedSums:
    """sum_n l_n, sum_n g_n and sum_n g_n**2 per variable from one forward and one backward
    pass (module docstring). `per_example_loss(y_pred)` returns the [n] losses l_n; `variables`
    must all belong to covered layers (`uncovered_layers(model, variables) == []`)."""
    layers = layers_owning(model, variables)
    with _recording(layers) as record, tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss_sum = tf.reduce_sum(per_example_loss(y_pred))
    calls = {key: [(a, z) for a, z in entries if z is not None] for key, entries in record.items()}
    zs = [z for entries in calls.values() for _, z in entries]
    dzs = iter(tape.gradient(loss_sum, zs, unconnected_gradients=tf.UnconnectedGradients.ZERO))
    sums = {}
    for layer in layers:
        with_grads = [(a, next(dzs)) for a, _ in calls[id(layer)]]
        pairs = _layer_sums(layer, with_grads, n)
        for var, pair in zip((layer._kernel, layer.bias), pairs):  # noqa: SLF001
            if var is not None:
                sums[id(var)] = pair
    return BatchedSums(
        loss_sum=loss_sum,
        grad_sum=[sums[id(v)][0] for v in variables],
        sq_sum=[sums[id(v)][1] for v in variables],
        y_pred=y_pred,
    )
