"""allocator.py: which child environments get TCMalloc, that a child really runs on it, and
that TensorFlow computes the same bytes on it as on glibc's malloc."""

import os
import subprocess
import sys

import pytest

from keras_largebatch import allocator
from keras_largebatch.allocator import OPT_OUT_VAR, TCMALLOC, with_tcmalloc

needs_tcmalloc = pytest.mark.skipif(
    not allocator.tcmalloc_available(),
    reason="libtcmalloc-minimal4 not installed (make install installs it)")


@pytest.fixture
def installed(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_available", lambda: True)


def test_prepended_to_an_existing_preload(installed):
    env = with_tcmalloc({"LD_PRELOAD": "libfoo.so", "PATH": "/bin"})
    assert env == {"LD_PRELOAD": f"{TCMALLOC}:libfoo.so", "PATH": "/bin"}
    assert with_tcmalloc({})["LD_PRELOAD"] == TCMALLOC


def test_given_env_is_not_modified(installed):
    env = {"PATH": "/bin"}
    with_tcmalloc(env)
    assert env == {"PATH": "/bin"}


@pytest.mark.parametrize("env", [
    {OPT_OUT_VAR: "system"},
    {OPT_OUT_VAR: "SYSTEM", "LD_PRELOAD": "libfoo.so"},
    {"LD_PRELOAD": f"/usr/lib/x86_64-linux-gnu/{TCMALLOC}"},  # already there, by full path
    {"LD_PRELOAD": f"libfoo.so {TCMALLOC}"},  # ld.so also splits on spaces
])
def test_left_alone(installed, env):
    assert with_tcmalloc(env) == env


def test_not_installed_leaves_env_alone(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_available", lambda: False)
    assert with_tcmalloc({"PATH": "/bin"}) == {"PATH": "/bin"}


_PROBE = """
from keras_largebatch.allocator import preloaded
print(preloaded())
"""

# Convolution, its gradients and a reduction, fed from a fixed seed: the bytes of the results.
_MATHS = """
import hashlib, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
g = tf.random.Generator.from_seed(7)
x = g.normal([16, 28, 28, 3])
k = tf.Variable(g.normal([5, 5, 3, 32]) * 0.1)
h = hashlib.sha256()
for _ in range(3):
    with tf.GradientTape() as tape:
        y = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME")), 2, 2, "VALID")
        loss = tf.reduce_mean(tf.square(y))
    grad = tape.gradient(loss, k)
    k.assign_sub(0.1 * grad)
    h.update(grad.numpy().tobytes())
print(h.hexdigest())
"""


def _run(code, env):
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@needs_tcmalloc
def test_child_runs_on_tcmalloc_and_opt_out_does_not():
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT_VAR)}
    assert _run(_PROBE, with_tcmalloc(base)) == "True"
    assert _run(_PROBE, with_tcmalloc({**base, OPT_OUT_VAR: "system"})) == "False"


@needs_tcmalloc
def test_tensorflow_computes_the_same_bytes_on_both_allocators():
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", OPT_OUT_VAR)}
    assert _run(_MATHS, with_tcmalloc(base)) == _run(_MATHS, base)
