"""Every registered network: shapes, logits, parameter counts, BN placement, options.

Parameter counts are checked against numbers known independently of this code: He et al.
2016 Table 6 for the CIFAR ResNets, Keras' own VGG19 / ResNet50 sizes, and counts worked
out here from the layer sizes the papers give.
"""

import keras
import numpy as np
import pytest

import keras_largebatch.layers
from keras_largebatch.errors import UserInputError
from keras_largebatch.models import build_model, model_names
from keras_largebatch.models.norm import _batch_norm
from keras_largebatch.models.resnet_cifar import ZeroPadShortcut

SMALL_INPUTS = [((28, 28, 1), 10), ((32, 32, 3), 100)]


def trainable_count(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def bn_layers(model: keras.Model) -> list:
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def weight_layers(model: keras.Model) -> list:
    """Layers with a kernel: convs and dense."""
    kinds = (keras.layers.Conv2D, keras.layers.Dense)
    return [layer for layer in model.layers if isinstance(layer, kinds)]


def check_logits(model: keras.Model, input_shape, num_classes) -> None:
    assert model.output_shape == (None, num_classes)
    assert model.layers[-1].activation is keras.activations.linear  # logits, no softmax
    out = model(np.ones((2, *input_shape), "float32"), training=False)
    assert tuple(out.shape) == (2, num_classes)
    assert np.all(np.isfinite(np.asarray(out)))


# ------------------------------------------------------------------ every name builds


@pytest.mark.parametrize("input_shape,num_classes", SMALL_INPUTS)
@pytest.mark.parametrize("name", [n for n in model_names() if n != "resnet50"])
def test_every_model_builds_and_outputs_logits(name, input_shape, num_classes):
    model = build_model(name, input_shape=input_shape, num_classes=num_classes)
    check_logits(model, input_shape, num_classes)


def test_resnet50_on_small_input_outputs_logits():
    model = build_model("resnet50", input_shape=(32, 32, 3), num_classes=10)
    check_logits(model, (32, 32, 3), 10)
    # keras.applications.ResNet50 has 25,636,712 weights with its 1000-way head.
    head_1000, head_10 = 2048 * 1000 + 1000, 2048 * 10 + 10
    assert model.count_params() == 25_636_712 - head_1000 + head_10


def test_unknown_model_name_is_a_user_error_naming_the_value():
    with pytest.raises(UserInputError, match="'resnet_9000'.*resnet20"):
        build_model("resnet_9000", input_shape=(32, 32, 3), num_classes=10)


# ------------------------------------------------------------------ CIFAR ResNets


def resnet_cifar_params(depth, in_channels, num_classes, batch_norm=True):
    """Conv kernels + (BN gamma/beta or conv bias) + dense: option A adds nothing."""
    n = (depth - 2) // 6

    def per_conv_extra(filters):
        return 2 * filters if batch_norm else filters

    total = 9 * in_channels * 16 + per_conv_extra(16)
    prev = 16
    for filters in (16, 32, 64):
        for _ in range(n):
            total += 9 * prev * filters + 9 * filters * filters
            total += 2 * per_conv_extra(filters)
            prev = filters
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize(
    "depth,millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)]
)
def test_resnet_parameter_counts_match_he_et_al_table_6(depth, millions):
    model = build_model(f"resnet{depth}", input_shape=(32, 32, 3), num_classes=10)
    count = trainable_count(model)
    assert round(count / 1e6, 2) == millions
    assert count == resnet_cifar_params(depth, 3, 10)


def test_resnet_option_a_shortcuts_are_weightless_identities():
    model = build_model("resnet20", input_shape=(32, 32, 3), num_classes=10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 19  # 6n + 1 3x3 convs, no 1x1 projections
    assert all(c.kernel_size == (3, 3) for c in convs)
    shortcuts = [layer for layer in model.layers if isinstance(layer, ZeroPadShortcut)]
    assert [s.name for s in shortcuts] == [
        "stage2_block1_shortcut",
        "stage3_block1_shortcut",
    ]
    weighted = {type(layer).__name__ for layer in model.layers if layer.weights}
    assert weighted == {"Conv2D", "BatchNormalization", "Dense"}
    # identity blocks add the block input itself
    add = model.get_layer("stage1_block2_add")
    assert add.input[1] is model.get_layer("stage1_block1_out").output


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros():
    x = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    y = np.asarray(ZeroPadShortcut(5, strides=2)(x))
    assert y.shape == (2, 2, 2, 5)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0.0)


def test_resnet_without_bn_has_no_bn_and_conv_biases():
    model = build_model(
        "resnet8", input_shape=(32, 32, 3), num_classes=10, batch_norm=False
    )
    assert bn_layers(model) == []
    assert trainable_count(model) == resnet_cifar_params(8, 3, 10, batch_norm=False)
    with_bn = build_model("resnet8", input_shape=(32, 32, 3), num_classes=10)
    assert len(bn_layers(with_bn)) == 7


def test_resnet_serialization_round_trip_keeps_the_shortcut_layer():
    model = build_model("resnet8", input_shape=(32, 32, 3), num_classes=10)
    clone = keras.models.model_from_json(model.to_json())
    assert isinstance(clone.get_layer("stage2_block1_shortcut"), ZeroPadShortcut)
    assert clone.count_params() == model.count_params()


def test_resnet_depth_must_be_6n_plus_2():
    from keras_largebatch.models.resnet_cifar import resnet_cifar

    with pytest.raises(UserInputError, match="depth=21"):
        resnet_cifar(depth=21, input_shape=(32, 32, 3), num_classes=10)


# ------------------------------------------------------------------ AlexNets


def reduced_alexnet_params(in_channels, num_classes, batch_norm):
    """Seed 001 Sec. 3.1 layer sizes; 'same' pools leave 4x4x64 for 28 and 32 px."""
    conv_bn, fc_bn = batch_norm != "none", batch_norm == "all"
    total, prev = 0, in_channels
    for kernel, channels in zip((5, 3, 3, 3, 3), (16, 48, 96, 64, 64), strict=True):
        total += kernel * kernel * prev * channels
        total += 2 * channels if conv_bn else channels  # BN gamma+beta, else bias
        prev = channels
    prev = 4 * 4 * 64
    for units in (256, 256):
        total += prev * units + (2 * units if fc_bn else units)
        prev = units
    return total + prev * num_classes + num_classes


@pytest.mark.parametrize("batch_norm,n_bn", [("none", 0), ("conv", 5), ("all", 7)])
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_reduced_alexnet_count_and_bn_placement(batch_norm, n_bn, input_shape):
    model = build_model(
        "alexnet_reduced",
        input_shape=input_shape,
        num_classes=10,
        batch_norm=batch_norm,
    )
    assert trainable_count(model) == reduced_alexnet_params(
        input_shape[-1], 10, batch_norm
    )
    names = [layer.name for layer in bn_layers(model)]
    assert len(names) == n_bn
    assert ("fc1_bn" in names) == (batch_norm == "all")
    assert model.get_layer("flatten").output.shape == (None, 1024)


def test_reduced_alexnet_none_variant_matches_hand_count():
    # 1216 + 6960 + 41568 + 55360 + 36928 (convs) + 262400 + 65792 + 2570 (dense)
    assert reduced_alexnet_params(3, 10, "none") == 472_794


def test_reduced_alexnet_rejects_unknown_bn_option():
    with pytest.raises(UserInputError, match="batch_norm='fc'"):
        build_model(
            "alexnet_reduced", input_shape=(32, 32, 3), num_classes=10, batch_norm="fc"
        )


def test_seed_002_cnn_counts_by_hand_with_and_without_bn():
    # Convs 3x3 with 1 -> 32 -> 64 -> 128 channels, three 'same' pools 28 -> 14 -> 7 -> 4,
    # dense 4 * 4 * 128 -> 10. Without BN each conv has a bias; with BN the bias goes and
    # each BN brings gamma and beta (2 per channel).
    plain = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)
    assert trainable_count(plain) == 320 + 18_496 + 73_856 + 20_490 == 113_162
    assert not bn_layers(plain)
    bn = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                     batch_norm=True, bn_momentum=0.9)
    assert trainable_count(bn) == (288 + 64) + (18_432 + 128) + (73_728 + 256) + 20_490
    assert [b.name for b in bn_layers(bn)] == ["conv1_bn", "conv2_bn", "conv3_bn"]
    assert all(b.momentum == 0.9 for b in bn_layers(bn))
    # conv (no bias) -> BN -> ReLU -> pool, in that order
    names = [layer.name for layer in bn.layers]
    assert names[1:5] == ["conv1", "conv1_bn", "conv1_relu", "pool1"]
    assert not bn.get_layer("conv1").use_bias
    check_logits(bn, (28, 28, 1), 10)


def test_alexnet_bn_at_imagenet_size_has_bvlc_geometry():
    model = build_model("alexnet_bn", input_shape=(227, 227, 3), num_classes=1000)
    assert model.get_layer("conv1").strides == (4, 4)
    assert model.get_layer("flatten").output.shape == (None, 6 * 6 * 256)
    convs = 11 * 11 * 3 * 96 + 5 * 5 * 96 * 256 + 3 * 3 * 256 * 384
    convs += 3 * 3 * 384 * 384 + 3 * 3 * 384 * 256  # ungrouped, no bias
    bn = 2 * (96 + 256 + 384 + 384 + 256)
    fc = 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert trainable_count(model) == convs + bn + fc == 62_379_720
    assert len(bn_layers(model)) == 5


def test_alexnet_bn_small_inputs_use_stride_one_and_too_small_is_an_error():
    model = build_model("alexnet_bn", input_shape=(32, 32, 3), num_classes=10)
    assert model.get_layer("conv1").strides == (1, 1)
    assert model.get_layer("flatten").output.shape == (None, 3 * 3 * 256)
    with pytest.raises(UserInputError, match="first_conv_stride=1"):
        build_model(
            "alexnet_bn", input_shape=(32, 32, 3), num_classes=10, first_conv_stride=4
        )


# ------------------------------------------------------------------ VGG, ResNet-50


def test_vgg19_bn_count():
    model = build_model("vgg19_bn", input_shape=(32, 32, 3), num_classes=10)
    # Keras' VGG19 conv base has 20,024,384 weights incl. 5,504 biases; ours has no
    # conv bias (BN follows), 16 BN layers, and the 512-512-10 head.
    conv_channels = 2 * 64 + 2 * 128 + 4 * 256 + 8 * 512
    assert conv_channels == 5504
    head = 512 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert trainable_count(model) == 20_024_384 - 5504 + 2 * 5504 + head
    assert len(bn_layers(model)) == 16
    assert model.get_layer("block5_pool").output.shape == (None, 1, 1, 512)


def test_resnet50_rejects_inputs_below_32_px():
    with pytest.raises(UserInputError, match=r"input_shape=\(28, 28, 1\)"):
        build_model("resnet50", input_shape=(28, 28, 1), num_classes=10)


# ------------------------------------------------------------------ weight decay


def test_weight_decay_is_coupled_l2_on_kernels_in_model_losses():
    model = build_model("resnet8", input_shape=(32, 32, 3), num_classes=10)
    assert model.losses == []
    wd = 1e-4
    model = build_model(
        "resnet8", input_shape=(32, 32, 3), num_classes=10, weight_decay=wd
    )
    kernels = [layer.kernel for layer in weight_layers(model)]
    assert len(model.losses) == len(kernels) == 8
    expected = wd / 2 * sum(float(np.sum(np.square(k))) for k in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_negative_weight_decay_is_a_user_error():
    with pytest.raises(UserInputError, match="weight_decay=-0.1"):
        build_model(
            "vgg19_bn", input_shape=(32, 32, 3), num_classes=10, weight_decay=-0.1
        )


# ------------------------------------------------------------------ ghost BN switch


class _StandInGhostBN(keras.layers.BatchNormalization):
    """Records virtual_batch_size; stands in until the real layer is importable."""

    def __init__(self, virtual_batch_size, **kwargs):
        super().__init__(**kwargs)
        self.virtual_batch_size = virtual_batch_size


@pytest.fixture
def stand_in_ghost_bn(monkeypatch):
    monkeypatch.setattr(
        keras_largebatch.layers,
        "GhostBatchNormalization",
        _StandInGhostBN,
        raising=False,
    )
    return _StandInGhostBN


@pytest.mark.parametrize(
    "name,options",
    [
        ("alexnet_reduced", {"batch_norm": "all"}),
        ("alexnet_bn", {}),
        ("resnet8", {}),
        ("vgg19_bn", {"fc_units": ()}),
        ("cnn_fashion", {"batch_norm": True}),
    ],
)
def test_bn_batch_size_swaps_every_bn_layer_for_ghost_bn(
    stand_in_ghost_bn, name, options
):
    model = build_model(
        name, input_shape=(32, 32, 3), num_classes=10, bn_batch_size=8, **options
    )
    bns = bn_layers(model)
    assert bns and all(isinstance(b, stand_in_ghost_bn) for b in bns)
    assert {b.virtual_batch_size for b in bns} == {8}


def test_resnet50_bn_batch_size_and_weight_decay_via_clone(stand_in_ghost_bn):
    model = build_model(
        "resnet50",
        input_shape=(32, 32, 3),
        num_classes=10,
        bn_batch_size=16,
        weight_decay=1e-4,
    )
    bns = bn_layers(model)
    assert len(bns) == 53 and all(isinstance(b, stand_in_ghost_bn) for b in bns)
    assert bns[0].epsilon == pytest.approx(1.001e-5)
    kernels = weight_layers(model)
    assert len(model.losses) == len(kernels) == 54
    check_logits(model, (32, 32, 3), 10)


def test_missing_ghost_bn_layer_gives_a_clear_error(monkeypatch):
    monkeypatch.delattr(
        keras_largebatch.layers, "GhostBatchNormalization", raising=False
    )
    with pytest.raises(ImportError, match="bn_batch_size=8 .*bn_batch_size=None"):
        _batch_norm(8, "bn")


def test_bad_bn_batch_size_is_a_user_error():
    with pytest.raises(UserInputError, match="bn_batch_size=0"):
        _batch_norm(0, "bn")


def test_real_ghost_bn_layer_when_available():
    ghost = pytest.importorskip("keras_largebatch.layers.ghost_batch_norm")
    layer = _batch_norm(4, "bn")
    assert isinstance(layer, ghost.GhostBatchNormalization)
    assert layer.name == "bn"
