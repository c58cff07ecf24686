"""Environments for subprocesses on the other Keras backends (JAX, PyTorch).

    env = backend_env("jax", ROOT)     # KERAS_BACKEND=jax, PYTHONPATH=.jax-packages:ROOT:...
    require_backend("jax")             # fails if `make test` has not installed it

Keras fixes its backend at first import, so every other backend runs in a fresh interpreter.
jax is not installed into the TensorFlow venv: TensorFlow imports it whenever it is importable
(TF Lite's `from jax import jit`, tensorflow/lite/python/util.py), which costs every TensorFlow
process ~0.5 s more CPU at start-up (12%, `bench/startup.py`; BUILD_NOTES "Dependencies").
`make test` installs the pinned tests/jax-requirements.txt into `.jax-packages/`, and only the
JAX subprocesses put that folder on their PYTHONPATH. PyTorch is not a dependency (its wheel
is several GB): tested where installed, skipped with the reason otherwise.
"""

import importlib.util
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
JAX_PACKAGES = ROOT / ".jax-packages"


def backend_env(backend: str, *paths) -> dict:
    """os.environ with KERAS_BACKEND=`backend` and `paths` (and, for jax, .jax-packages) first
    on PYTHONPATH."""
    front = ([str(JAX_PACKAGES)] if backend == "jax" else []) + [str(p) for p in paths]
    rest = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join(front + rest))


def require_backend(backend: str) -> None:
    """Fail when jax is missing (`make test` installs it); skip when torch is."""
    if backend == "jax":
        if not (JAX_PACKAGES / "jax").is_dir() and importlib.util.find_spec("jax") is None:
            pytest.fail(f"jax for the JAX-backend tests is missing: run `make test` (installs "
                        f"tests/jax-requirements.txt into {JAX_PACKAGES.name}/)")
    elif importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
