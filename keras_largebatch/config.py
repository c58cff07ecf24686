"""Gin at the edge: gin-configurable versions of the library's functions and classes.

Only `main` (and tests of gin files) import this module; the library itself never reads gin and
no module attribute is rebound here: `components()` returns a `Components` (training/
components.py) whose factories are gin wrappers of the library's own, and `train` is the gin
wrapper of `training.loop.train` that main calls with them. Binding names, by what they
configure:

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

import dataclasses
import functools
import inspect
from collections.abc import Callable

import gin
import keras

from keras_largebatch import schedules
from keras_largebatch.data import augment, sources
from keras_largebatch.errors import UserInputError
from keras_largebatch.goodput.batch import GoodputBatch
from keras_largebatch.models import registry
from keras_largebatch.optimizers import LARS, BAMomentum
from keras_largebatch.training import loop, strategy
from keras_largebatch.training.components import Components
from keras_largebatch.validate import checking_booleans

SCHEDULES = ("Constant", "LinearWarmup", "PolynomialDecay", "StepDecay", "BatchScaled",
             "BatchScheduleMultiplier", "FixedBatch", "PiecewiseBatch", "AdaBatch")
# train() arguments main passes itself; not bindable from a config.
NOT_BINDABLE = ("run_dir", "overwrite", "config_text", "operative_config", "strategy",
                "components", "signals", "dry_run")


@dataclasses.dataclass(frozen=True)
class Configurables:
    train: Callable
    components: Components


@functools.cache
def register_configurables() -> Configurables:
    """Register every experiment choice with gin, once per process; what main calls."""
    sgd = gin.external_configurable(keras.optimizers.SGD, module="keras.optimizers")
    adam = gin.external_configurable(keras.optimizers.Adam, module="keras.optimizers")

    def momentum(**kw):
        """SGD with SGD.momentum if bound, else 0.9 (an explicit argument would beat gin)."""
        try:
            gin.query_parameter("SGD.momentum")
        except ValueError:
            kw["momentum"] = 0.9
        return sgd(**kw)

    ba = gin.external_configurable(BAMomentum, module="keras_largebatch.optimizers")
    optimizers = {name: _naming_bindings(factory, cls) for name, (factory, cls) in {
        # 'sgd' is plain SGD whatever SGD.momentum says (as 'ba_sgd' is BA with rho = 0), so
        # one config can bind SGD.momentum = 0.9 and compare 'momentum' with 'sgd' by name.
        "sgd": (lambda **kw: sgd(**{**kw, "momentum": 0.0}), "SGD"),
        "momentum": (momentum, "SGD"),
        "adam": (adam, "Adam"),
        "lars": (gin.external_configurable(LARS, module="keras_largebatch.optimizers"), "LARS"),
        "ba_momentum": (ba, "BAMomentum"),
        "ba_sgd": (lambda **kw: ba(**{**kw, "momentum": 0.0}), "BAMomentum"),  # rho = 0
    }.items()}
    components = Components(
        make_strategy=gin.external_configurable(strategy.make_strategy, name="make_strategy"),
        sources={name: gin.external_configurable(checking_booleans(fn, name), name=name,
                                                 module="data")
                 for name, fn in sources.SOURCES.items()},
        models={name: gin.external_configurable(checking_booleans(fn, name), name=name,
                                                module="models")
                for name, fn in registry.builders().items()},
        optimizers=optimizers,
        make_augment=gin.external_configurable(
            checking_booleans(augment.make_augment, "make_augment"), name="make_augment"),
    )
    for name in SCHEDULES:
        gin.external_configurable(getattr(schedules, name), module="keras_largebatch.schedules")
    gin.external_configurable(GoodputBatch, module="keras_largebatch.goodput")
    train = gin.external_configurable(loop.train, name="train", denylist=list(NOT_BINDABLE))
    return Configurables(train=train, components=components)


def _naming_bindings(factory: Callable, cls: str) -> Callable:
    """`factory` whose argument errors name the gin bindings of `cls` (Keras' own messages
    often name the argument but not the value)."""

    def create(**kwargs):
        try:
            return factory(**kwargs)
        except (ValueError, TypeError) as e:
            bound = ", ".join(f"{cls}.{k} = {v!r}" for k, v in gin.get_bindings(cls).items())
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserInputError(f"{cls} refused its arguments ({first}); bound: "
                                 f"{bound or 'nothing'}: fix the {cls}.* bindings") from None

    return create


def list_configurables() -> list[str]:
    """Every configurable a gin file may bind, as its shortest unique name, and each of its
    bindable parameters (`train.epochs`, `GoodputBatch.max_batch_size`, ...), sorted."""
    register_configurables()
    registry_ = gin.config._REGISTRY  # noqa: SLF001 - gin has no public listing
    names = []
    for selector, configurable in registry_.items():
        name = registry_.minimal_selector(selector)
        names.append(name)
        names.extend(f"{name}.{p}" for p in _bindable_parameters(configurable))
    return sorted(set(names))


def _bindable_parameters(configurable) -> list[str]:
    """The keyword parameters gin lets a config bind (no *args/**kwargs, none denylisted)."""
    try:
        signature = inspect.signature(configurable.wrapped)
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    deny = set(configurable.denylist or ())
    allow = set(configurable.allowlist or ())
    return [p.name for p in signature.parameters.values()
            if p.kind in kinds and p.name not in deny and p.name != "self"
            and (not allow or p.name in allow)]
