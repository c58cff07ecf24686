"""Gin at the edge: registers the library's plain functions and classes as configurables.

Only `main` (and tests of gin files) import this module; the library itself never reads gin.
Binding names, by what they configure:

    train.*                   the run (keras_largebatch.training.loop.train)
    make_strategy.*           replicas: make_strategy.num_cpu_replicas = 2
    fashion_mnist.data_dir    data sources (fashion_mnist, mnist, cifar10, cifar100, imagenet2012)
    cnn_fashion.dropout       model builders, by registered model name
    SGD.momentum, LARS.*      optimizer classes, chosen by train.optimizer = 'sgd' (momentum 0) |
    BAMomentum.*              'momentum' (SGD.momentum, default 0.9) | 'adam' | 'lars' |
                              'ba_momentum' | 'ba_sgd' (BAMomentum with momentum 0)
    make_augment.cutout_size  augmentation options; the policy is train.augment = 'cutout'
    LinearWarmup.*, AdaBatch.* schedules: train.learning_rate = @LinearWarmup(),
                              train.batch_schedule = @AdaBatch()
"""

from __future__ import annotations

import gin
import keras

from keras_largebatch import schedules
from keras_largebatch.data import augment, sources
from keras_largebatch.models import registry
from keras_largebatch.optimizers import LARS, BAMomentum
from keras_largebatch.training import loop, optimizer_factory, strategy

SCHEDULES = ("Constant", "LinearWarmup", "PolynomialDecay", "StepDecay", "BatchScaled",
             "BatchScheduleMultiplier", "FixedBatch", "PiecewiseBatch", "AdaBatch")

_registered = False


def register_configurables() -> None:
    """Make every experiment choice a gin binding (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True

    loop.train = gin.external_configurable(loop.train, name="train")
    strategy.make_strategy = gin.external_configurable(strategy.make_strategy,
                                                       name="make_strategy")
    loop.make_strategy = strategy.make_strategy

    for name, fn in list(sources.SOURCES.items()):
        sources.SOURCES[name] = gin.external_configurable(fn, name=name, module="data")
    for name in registry.model_names():
        registry._BUILDERS[name] = gin.external_configurable(
            registry._BUILDERS[name], name=name, module="models")

    sgd = gin.external_configurable(keras.optimizers.SGD, module="keras.optimizers")
    adam = gin.external_configurable(keras.optimizers.Adam, module="keras.optimizers")
    # 'sgd' is plain SGD whatever SGD.momentum says (as 'ba_sgd' is BA with rho = 0), so one
    # config can bind SGD.momentum = 0.9 and compare 'momentum' with 'sgd' by name alone.
    optimizer_factory.register_optimizer("sgd", lambda **kw: sgd(**{**kw, "momentum": 0.0}))
    optimizer_factory.register_optimizer("adam", adam)

    def momentum(**kw):
        """SGD with SGD.momentum if bound, else 0.9 (an explicit argument would beat gin)."""
        try:
            gin.query_parameter("SGD.momentum")
        except ValueError:
            kw["momentum"] = 0.9
        return sgd(**kw)

    optimizer_factory.register_optimizer("momentum", momentum)
    optimizer_factory.register_optimizer(
        "lars", gin.external_configurable(LARS, module="keras_largebatch.optimizers"))
    ba = gin.external_configurable(BAMomentum, module="keras_largebatch.optimizers")
    optimizer_factory.register_optimizer("ba_momentum", ba)
    optimizer_factory.register_optimizer(
        "ba_sgd", lambda **kw: ba(**{**kw, "momentum": 0.0}))  # seed 002: rho = 0

    loop.make_augment = gin.external_configurable(augment.make_augment, name="make_augment")
    for name in SCHEDULES:
        gin.external_configurable(getattr(schedules, name), module="keras_largebatch.schedules")


def list_configurables() -> list[str]:
    """Every configurable a gin file may bind, as its shortest unique name, sorted."""
    register_configurables()
    registry_ = gin.config._REGISTRY  # noqa: SLF001 - gin has no public listing
    return sorted(registry_.minimal_selector(selector) for selector, _ in registry_.items())
