"""Model registry: `build_model(name, input_shape=..., num_classes=...)`.

Builders are plain functions `fn(*, input_shape, num_classes, **options) -> keras.Model`;
each module registers its networks with `@register("name")`. Input shape and class count come
from the data source, so the same name works on Fashion-MNIST, CIFAR and ImageNet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import keras

from keras_largebatch.errors import UserInputError

ModelBuilder = Callable[..., keras.Model]
_BUILDERS: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make `fn` available as `build_model(name, ...)`."""

    def wrap(fn: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise AssertionError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return wrap


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def builders() -> dict[str, ModelBuilder]:
    """A copy of the table name -> builder (keras_largebatch/config.py wraps each for gin)."""
    return dict(_BUILDERS)


def build_model(
    name: str, *, input_shape: tuple[int, ...], num_classes: int,
    builders: Mapping[str, ModelBuilder] | None = None, **options
) -> keras.Model:
    """Build the registered network `name` for the given input shape and class count.

    `builders` replaces the registered table (e.g. by gin-configurable versions of it)."""
    table = _BUILDERS if builders is None else builders
    if name not in table:
        raise UserInputError(
            f"unknown model {name!r}; choose one of {', '.join(sorted(table))}"
        )
    return table[name](input_shape=tuple(input_shape), num_classes=num_classes, **options)
