"""The factories a run builds its parts with, looked up by the names a config gives.

    components = Components()                          # the library's plain functions
    components = keras_largebatch.config.components()   # the same, wrapped for gin bindings

The loop never reads gin and never looks at module-level tables itself: it asks these factories
(`make_strategy()`, `sources["fashion_mnist"](...)`, `models["cnn_fashion"](...)`,
`optimizers["lars"](learning_rate=...)`, `make_augment("cutout", ...)`). keras_largebatch/config.py
builds a `Components` whose entries are gin-configurable wrappers of the same functions, so a
binding like `fashion_mnist.max_train_examples = 1000` reaches the data source without any
module attribute being rebound. Tests pass their own tables (e.g. an optimizer with fixed
options) the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from keras_largebatch.data import augment as augment_lib
from keras_largebatch.data import sources as sources_lib
from keras_largebatch.models import registry
from keras_largebatch.training import optimizer_factory, strategy


@dataclasses.dataclass(frozen=True)
class Components:
    make_strategy: Callable = strategy.make_strategy
    sources: Mapping[str, Callable] = dataclasses.field(
        default_factory=lambda: dict(sources_lib.SOURCES))
    models: Mapping[str, Callable] = dataclasses.field(default_factory=registry.builders)
    optimizers: Mapping[str, Callable] = dataclasses.field(
        default_factory=lambda: dict(optimizer_factory.OPTIMIZERS))
    make_augment: Callable = augment_lib.make_augment

    def replace(self, **changes) -> Components:
        """A copy with some factories replaced; mappings are merged (e.g. one optimizer)."""
        merged = {k: ({**getattr(self, k), **v} if isinstance(v, Mapping) else v)
                  for k, v in changes.items()}
        return dataclasses.replace(self, **merged)
