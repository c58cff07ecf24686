"""Optimizers by name: `create_optimizer("lars", learning_rate=...)`.

Each name maps to a factory of a Keras 3 optimizer; its other hyper-parameters are gin bindings
on the class itself (`LARS.trust_coefficient = 0.001`, `SGD.momentum = 0.9`), wired in
keras_largebatch/config.py, which passes gin-configurable factories as `optimizers=`.

    sgd       SGD without momentum          momentum   SGD, momentum 0.9
    adam      Adam                          lars       LARS (seed 004)
    ba_momentum  BA-Momentum (seed 002)     ba_sgd     BA-Momentum with momentum 0 (BA-SGD)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.optimizers import LARS, BAMomentum

OptimizerFactory = Callable[..., keras.optimizers.Optimizer]


def _sgd(**kw):
    return keras.optimizers.SGD(**{**kw, "momentum": 0.0})


def _momentum_sgd(**kw):
    kw.setdefault("momentum", 0.9)
    return keras.optimizers.SGD(**kw)


def _ba_sgd(**kw):
    return BAMomentum(**{**kw, "momentum": 0.0})  # seed 002: rho = 0


OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": _sgd,
    "momentum": _momentum_sgd,
    "adam": keras.optimizers.Adam,
    "lars": LARS,
    "ba_momentum": BAMomentum,
    "ba_sgd": _ba_sgd,
}


def create_optimizer(name: str, *, learning_rate,
                     optimizers: Mapping[str, OptimizerFactory] | None = None
                     ) -> keras.optimizers.Optimizer:
    """Instantiate the optimizer registered as `name` with this learning rate (or schedule)."""
    table = OPTIMIZERS if optimizers is None else optimizers
    if name not in table:
        raise UserInputError(
            f"unknown optimizer {name!r}; choose one of {', '.join(sorted(table))}"
        )
    return check_optimizer(table[name](learning_rate=learning_rate))


def check_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Refuse settings Keras accepts silently: non-bool flags ('no' would mean True), negative
    clipping or decay, betas outside [0, 1). Names as in a gin binding: `SGD.nesterov`."""
    cls = type(optimizer).__name__
    for attr in ("nesterov", "amsgrad", "use_ema"):
        value = getattr(optimizer, attr, None)
        if value is not None:
            validate.boolean(f"{cls}.{attr}", value)
    for attr in ("clipnorm", "clipvalue", "global_clipnorm"):
        value = getattr(optimizer, attr, None)
        if value is not None:
            validate.positive(f"{cls}.{attr}", value, fix="give a finite number > 0 or None")
    for attr in ("beta_1", "beta_2"):
        value = getattr(optimizer, attr, None)
        if value is not None:
            validate.in_range(f"{cls}.{attr}", value, 0.0, 1.0, high_open=True)
    for attr in ("weight_decay", "epsilon"):
        value = getattr(optimizer, attr, None)
        if value is not None:
            validate.in_range(f"{cls}.{attr}", value, 0.0, float("inf"), high_open=True)
    if getattr(optimizer, "use_ema", False):
        validate.in_range(f"{cls}.ema_momentum", optimizer.ema_momentum, 0.0, 1.0)
    return optimizer
