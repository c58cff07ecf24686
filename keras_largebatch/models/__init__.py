"""The papers' networks as plain builder functions, selected by name with `build_model`."""

from keras_largebatch.models import cnn  # noqa: F401  (registers its builders)
from keras_largebatch.models.registry import build_model, model_names, register

__all__ = ["build_model", "model_names", "register"]
