"""The cluster bench's cost model now lives in the package: keras_largebatch/goodput/throughput.py
(the throughput model GoodputBatch fits online). Kept so `import cost_model` from bench/ works."""

from keras_largebatch.goodput.throughput import (  # noqa: F401
    NAMES,
    CostModel,
    Observation,
    features,
    fit,
    moved_bits,
)
