"""The papers' networks as plain builder functions, chosen by name (`build_model`)."""

from keras_largebatch.models import (  # noqa: F401  (importing registers the builders)
    alexnet,
    cnn,
    resnet50,
    resnet_cifar,
    vgg,
)
from keras_largebatch.models.registry import build_model, model_names, register

__all__ = ["build_model", "model_names", "register"]
