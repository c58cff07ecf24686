"""`bn_synchronized` reaches every BN layer of every BN builder (models/norm.py): plain BN
becomes Keras' synchronized BN, ghost BN gets synchronised moving statistics; off by default."""

import keras
import pytest

from keras_largebatch.errors import UserInputError
from keras_largebatch.layers import GhostBatchNormalization
from keras_largebatch.models import build_model

CASES = [("resnet8", (32, 32, 3), {}), ("vgg19_bn", (32, 32, 3), {"fc_units": ()}),
         ("alexnet_reduced", (28, 28, 1), {"batch_norm": "all"}),
         ("alexnet_bn", (32, 32, 3), {}), ("resnet50", (32, 32, 3), {})]


def _bn_layers(model):
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("name,shape,options", CASES)
def test_every_bn_layer_follows_the_option(name, shape, options):
    default = _bn_layers(build_model(name, input_shape=shape, num_classes=10, **options))
    assert default and not any(layer.synchronized for layer in default)
    synced = _bn_layers(build_model(name, input_shape=shape, num_classes=10,
                                    bn_synchronized=True, **options))
    assert len(synced) == len(default) and all(layer.synchronized for layer in synced)


def test_ghost_bn_gets_synchronised_moving_statistics():
    layers = _bn_layers(build_model("resnet8", input_shape=(32, 32, 3), num_classes=10,
                                    bn_batch_size=4, bn_synchronized=True))
    assert layers and all(isinstance(layer, GhostBatchNormalization)
                          and layer.sync_moving_statistics and not layer.synchronized
                          for layer in layers)


def test_a_non_boolean_is_a_user_error():
    with pytest.raises(UserInputError, match="bn_synchronized=1 must be True or False"):
        build_model("resnet8", input_shape=(32, 32, 3), num_classes=10, bn_synchronized=1)
