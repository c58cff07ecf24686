"""The README's "Use it in your own Keras model" snippet runs, on every backend.

Backend-neutral: run here and, from test_backends.py, under JAX and PyTorch.
"""

import pathlib
import re

import numpy as np
from keras import ops

from keras_largebatch.schedules import Progress, set_default_progress

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Use it in your own Keras model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_trains_with_the_adabatch_phases():
    set_default_progress(Progress())  # a fresh process-wide clock for this run
    try:
        code = snippet().replace("epochs=6)", "epochs=6, verbose=0)")
        namespace = {}
        exec(compile(code, str(README), "exec"), namespace)
        check(namespace)
    finally:
        set_default_progress(None)


def check(namespace):
    history, lr = namespace["history"], namespace["lr"]
    assert len(history.history["loss"]) == 6
    assert np.isfinite(history.history["loss"]).all()
    # After 6 epochs the optimizer's LR is the schedule's at epoch 6: 0.75 ** 3.
    assert lr.value(6.0) == 0.75**3
    model = namespace["model"]
    got = float(ops.convert_to_numpy(model.optimizer.learning_rate))
    np.testing.assert_allclose(got, 0.75**3, rtol=1e-6)
