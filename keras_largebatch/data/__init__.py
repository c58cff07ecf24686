"""Data sources by name and the one pipeline builder for all of them."""

from keras_largebatch.data.eval_inputs import eval_dataset_fn
from keras_largebatch.data.pipeline import check_batch_size, steps_per_epoch, train_dataset_fn
from keras_largebatch.data.sources import SOURCES, DataSource, get_source

__all__ = [
    "SOURCES", "DataSource", "check_batch_size", "eval_dataset_fn", "get_source",
    "steps_per_epoch", "train_dataset_fn",
]
