"""Keras finds keras_largebatch's classes in a `.keras` file as soon as Keras is imported.

    import keras_largebatch                  # imports no Keras, no TensorFlow
    import keras                             # -> imports layers, optimizers, schedules
    keras.saving.load_model("m.keras")       # finds LARS, BAMomentum, BAModel, ghost BN, ...

Keras resolves a custom class of a saved model only by its registered name
(`keras_largebatch>LARS`): for a package other than its own it never imports the module named
in the file (keras/src/saving/serialization_lib.py, `_retrieve_class_or_fn`), so the modules
that define the classes must have run before `load_model`. `import keras_largebatch` imports
no Keras, so that the command lines that only read JSON (studies.sweep --dry_run,
studies.plot without TensorBoard) start without TensorFlow. `install()` (called by `import
keras_largebatch`) therefore registers at the moment Keras exists: at once when Keras is
already imported, else right after Keras' own `__init__` has run (import_hooks.py). An error
in a registering module is not hidden: it propagates from `import keras`.
"""

from __future__ import annotations

import importlib
import sys

from keras_largebatch.import_hooks import when_imported

MODULES = ("keras_largebatch.layers", "keras_largebatch.optimizers",
           "keras_largebatch.schedules", "keras_largebatch.goodput.adascale",
           "keras_largebatch.goodput.batch", "keras_largebatch.goodput.optimizer")


def register() -> None:
    """Import every module that registers serializable classes (Keras must be importable)."""
    for name in MODULES:
        importlib.import_module(name)


def install() -> None:
    """Register now if Keras is imported, else when it is (module docstring)."""
    if "keras" in sys.modules:
        register()
    else:
        when_imported("keras", after=register)
