"""ba_covariance.py: one estimator per `covariance=` mode, chosen once from the mode string."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_largebatch.optimizers.ba_covariance import (
    COVARIANCE_MODES,
    DiagonalCovariance,
    FullCovariance,
    ProjectionCovariance,
    compute_chunk_statistics,
    covariance_estimator,
)
from keras_largebatch.optimizers.ba_momentum import BAMomentum


def test_factory_maps_each_mode_to_its_estimator():
    kinds = {"projection": ProjectionCovariance, "diagonal": DiagonalCovariance,
             "full": FullCovariance}
    assert set(kinds) == set(COVARIANCE_MODES)
    for mode, cls in kinds.items():
        estimator = covariance_estimator(mode, fd_step=1e-4)
        assert type(estimator) is cls and estimator.mode == mode
    assert covariance_estimator("projection", fd_step=1e-4).fd_step == 1e-4
    with pytest.raises(ValueError, match="covariance='exact'"):
        covariance_estimator("exact")


def test_optimizer_variables_have_one_layout_in_every_mode():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    names = {}
    for mode in COVARIANCE_MODES:
        opt = BAMomentum(covariance=mode)
        opt.build(model.trainable_variables)
        names[mode] = [v.name.split("_", 3)[-1] if "dense" in v.name else v.name
                       for v in opt.variables]
    common = ["loss_sum", "example_count", "projection_ssd", "chunks_in_batch", "m_star", "mu",
              "sigma", "s", "last_update_batch_size"]
    for mode, mode_names in names.items():
        assert mode_names[-len(common):] == common, mode
    assert sum("grad_sq_sum" in n for n in names["diagonal"]) == 2
    assert "grad_outer_sum" in names["full"]


def test_module_function_equals_the_estimator():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype("float32")
    y = rng.normal(size=(6, 2)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    loss_fn = keras.losses.MeanSquaredError(reduction=None)
    a = compute_chunk_statistics(model, loss_fn, x, y, covariance="diagonal")
    b = DiagonalCovariance().chunk_statistics(model, loss_fn, x, y)
    np.testing.assert_array_equal(a.loss_sum, b.loss_sum)
    for u, v in zip(a.sq_sum, b.sq_sum):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="reduction"):
        DiagonalCovariance().chunk_statistics(model, keras.losses.MeanSquaredError(), x, y)


def test_optimizers_do_not_import_training():
    code = ("import sys, keras_largebatch.optimizers; "
            "print(any(m.startswith('keras_largebatch.training') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
