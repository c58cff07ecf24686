"""Issue 4: `import keras_largebatch` alone registers every serializable class.

The model is saved in this process; a fresh interpreter that only runs `import
keras_largebatch` loads it (before the fix `load_model` failed unless the subpackages had been
imported). Backend-neutral: the subprocess inherits KERAS_BACKEND.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

from keras_largebatch.layers import GhostBatchNormalization
from keras_largebatch.optimizers import LARS
from keras_largebatch.schedules import LinearWarmup, PolynomialDecay


def test_one_import_is_enough_to_load_a_model(tmp_path):
    inputs = keras.Input((4,))
    x = GhostBatchNormalization(virtual_batch_size=2)(keras.layers.Dense(3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    lr = LinearWarmup(PolynomialDecay(0.5, 0.0, 10), warmup_epochs=1)
    model.compile(optimizer=LARS(lr, momentum=0.9), loss="mse")
    path = str(tmp_path / "m.keras")
    model.save(path)
    code = textwrap.dedent(f"""
        import sys
        import keras
        import keras_largebatch
        model = keras.saving.load_model({path!r})
        print(type(model.optimizer).__name__, type(model.optimizer._learning_rate).__name__,
              type(model.layers[2]).__name__)
        print("tensorflow" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split("\n")
    assert lines[0] == "LARS LinearWarmup GhostBatchNormalization"
    np.testing.assert_equal(keras.backend.backend() == "tensorflow" or lines[1] == "False", True)


def test_import_does_not_need_tensorflow_on_other_backends():
    if keras.backend.backend() == "tensorflow":
        return
    code = "import sys, keras_largebatch; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


def test_ba_momentum_names_its_supported_backends():
    import pytest

    from keras_largebatch.optimizers import BAMomentum

    if keras.backend.backend() in ("tensorflow", "jax"):  # BAModel's backends
        assert BAMomentum().covariance == "projection"
        return
    with pytest.raises(RuntimeError, match="supported backends: tensorflow, jax"):
        BAMomentum()
