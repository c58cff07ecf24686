"""Optimizers by name: `create_optimizer("lars", learning_rate=...)`.

Each name maps to a Keras 3 optimizer class; its other hyper-parameters are gin bindings on
the class itself (`LARS.trust_coefficient = 0.001`, `SGD.momentum = 0.9`), see config.py.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_largebatch.errors import UserInputError


def _momentum_sgd(**kw):
    kw.setdefault("momentum", 0.9)
    return keras.optimizers.SGD(**kw)


OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "sgd": keras.optimizers.SGD,
    "momentum": _momentum_sgd,
    "adam": keras.optimizers.Adam,
}


def register_optimizer(name: str, factory: Callable[..., keras.optimizers.Optimizer]) -> None:
    OPTIMIZERS[name] = factory


def create_optimizer(name: str, *, learning_rate) -> keras.optimizers.Optimizer:
    """Instantiate the optimizer registered as `name` with this learning rate (or schedule)."""
    if name not in OPTIMIZERS:
        raise UserInputError(
            f"unknown optimizer {name!r}; choose one of {', '.join(sorted(OPTIMIZERS))}"
        )
    return OPTIMIZERS[name](learning_rate=learning_rate)
