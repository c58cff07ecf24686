"""One home for argument checks: every user-facing check raises a one-line `UserInputError`.

    from keras_largebatch import validate
    epochs = validate.whole("train.epochs", epochs, minimum=1)
    warmup = validate.epochs("LinearWarmup.warmup_epochs", warmup)
    lr = validate.positive("train.learning_rate", lr)
    flag = validate.boolean("train.deterministic", flag)

Messages follow one shape: `<name>=<value!r> <what is wrong>; <the fix>`, so the CLI can print
the first line as is (keras_largebatch/main.py). Gin hands Python values through unchanged, so a
binding `train.deterministic = 'no'` arrives as the string 'no' and is refused here instead of
being read as True. Booleans are never numbers here (True is not the integer 1).
"""

from __future__ import annotations

import functools
import math
import numbers
import typing

from keras_largebatch.errors import UserInputError


def is_int(value) -> bool:
    """An integer of any kind (Python, NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number of any kind (int, float, NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_whole(value) -> bool:
    """A whole number: any int (never through float, which would call 10**22 + 1 not whole),
    or a finite real with no fractional part (2.0 from a config); not a bool, nan or inf."""
    if is_int(value):
        return True
    return is_real(value) and math.isfinite(value) and float(value).is_integer()


def whole(name: str, value, *, minimum: int = 1,
          fix: str = "give a whole number") -> int:
    """`value` as an int if it is a whole number >= `minimum` (2.0 from a config is fine)."""
    if not is_whole(value):
        raise UserInputError(f"{name}={value!r} is not a whole number; {fix}")
    if int(value) < minimum:
        raise UserInputError(f"{name}={value!r} must be >= {minimum}; {fix}")
    return int(value)


def positive(name: str, value, *, fix: str = "give a finite number > 0") -> float:
    """`value` as a float if it is finite and > 0."""
    if not is_real(value) or not math.isfinite(value) or value <= 0:
        raise UserInputError(f"{name}={value!r} must be a finite number > 0; {fix}")
    return float(value)


def epochs(name: str, value, positive: bool = False) -> float:
    """`value` as a float if it is a finite number of epochs >= 0 (> 0 when `positive`).

    For epoch counts and positions, which may be fractional (a warmup over 4.1 epochs).
    """
    if not is_real(value) or not math.isfinite(value):
        raise UserInputError(f"{name}={value!r} is not a finite number of epochs")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise UserInputError(f"{name}={value!r} must be {bound} epochs")
    return float(value)


def in_range(name: str, value, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False, fix: str = "") -> float:
    """`value` as a float if it lies in [low, high] (open ends where asked)."""
    ok = is_real(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        tail = f"; {fix}" if fix else ""
        raise UserInputError(f"{name}={value!r} must be a number in {interval}{tail}")
    return float(value)


def boolean(name: str, value) -> bool:
    """`value` if it is a real bool (True / False); strings like 'no' are refused."""
    if not isinstance(value, bool):
        raise UserInputError(f"{name}={value!r} must be True or False (without quotes)")
    return value


def one_of(name: str, value, choices) -> str:
    """`value` if it is one of `choices`."""
    if value not in tuple(choices):
        raise UserInputError(f"{name}={value!r} must be one of {', '.join(map(repr, choices))}")
    return value


def increasing(name: str, values, *, fix: str) -> list:
    """`values` as a list if strictly increasing."""
    values = list(values)
    for a, b in zip(values, values[1:]):
        if not b > a:
            raise UserInputError(f"{name}={values!r} is out of order ({b!r} after {a!r}); {fix}")
    return values


def checking_booleans(fn, name: str | None = None):
    """`fn` whose `bool`-annotated parameters refuse non-bools (config values like 'no').

    Used on the functions a config binds (data sources, model builders, make_augment), so a
    binding `cifar10.tfds_fallback = 'no'` fails with one line instead of meaning True.
    """
    hints = typing.get_type_hints(fn)
    flags = [p for p, t in hints.items() if t is bool or t == (bool | None)]
    if not flags:
        return fn
    label = name or fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for param in flags:
            if param in kwargs and kwargs[param] is not None:
                boolean(f"{label}.{param}", kwargs[param])
        return fn(*args, **kwargs)

    return wrapper
