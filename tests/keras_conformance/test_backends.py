"""Re-run the backend-neutral conformance modules under JAX and PyTorch, in subprocesses.

Keras fixes its backend when it is first imported, so every other backend needs a fresh
interpreter: one `pytest` subprocess per backend with `KERAS_BACKEND` set, over the
`test_*_neutral.py` modules and the README snippet, in the environment of
tests/backend_env.py (jax from `.jax-packages/`; PyTorch skipped with the reason where it is
not installed: it is not a dependency).
"""

import pathlib
import subprocess
import sys

import keras
import pytest

from tests.backend_env import backend_env, require_backend

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
NEUTRAL = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("test_*_neutral.py"))


@pytest.mark.slow  # a pytest subprocess per backend: 34-40 s for jax
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_neutral_modules_pass_under(backend):
    if keras.backend.backend() == backend:
        pytest.skip(f"this session already runs the {backend} backend")
    require_backend(backend)
    env = backend_env(backend)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *NEUTRAL],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
