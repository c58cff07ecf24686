"""Re-run the backend-neutral conformance modules under JAX and PyTorch, in subprocesses.

Keras fixes its backend when it is first imported, so every other backend needs a fresh
interpreter: one `pytest` subprocess per backend with `KERAS_BACKEND` set, over the
`test_*_neutral.py` modules and the README snippet. A backend whose package is missing is
skipped with the reason (PyTorch is not a dependency: its wheel is several GB).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import keras
import pytest

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
NEUTRAL = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("test_*_neutral.py"))
PACKAGES = {"jax": "jax", "torch": "torch"}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_neutral_modules_pass_under(backend):
    if keras.backend.backend() == backend:
        pytest.skip(f"this session already runs the {backend} backend")
    if importlib.util.find_spec(PACKAGES[backend]) is None:
        pytest.skip(f"{PACKAGES[backend]} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *NEUTRAL],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
