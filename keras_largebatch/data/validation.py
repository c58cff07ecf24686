"""A validation split held out of the training set: `train.validation_examples = N`.

    train, validation = hold_out(source, 5000)
    # train: the first num_train - N training examples (what the run trains on)
    # validation: the last N, as the "test" split of a DataSource (eval_inputs.py reads it)

Learning rates and the reported epoch are chosen on data the run did not train on and the test
set did not choose (a study selects on validation and reports test accuracy at that choice:
studies/). The split is fixed: the LAST N examples of the training arrays in file order (for
Fashion-MNIST, training images 60000 - N .. 59999), the same for every seed, every run and
every worker; the normalisation stays the source's (per-channel mean and std of the whole
training set, as published for the dataset). In-memory sources only: a source read in worker
shards or streamed from tfds has no fixed "last N" to hold out (one error line).
"""

from __future__ import annotations

import dataclasses

from keras_largebatch.data.sources import DataSource
from keras_largebatch.errors import UserInputError


def hold_out(source: DataSource, examples: int) -> tuple[DataSource, DataSource]:
    """(training part, validation part) of `source`: the last `examples` training examples."""
    if not source.in_memory or source.sharded_reader:
        raise UserInputError(f"train.validation_examples needs a dataset held in memory "
                             f"(fashion_mnist, mnist, cifar10, cifar100); {source.name} is "
                             f"read as a stream: drop train.validation_examples")
    if not 0 < examples < source.num_train:
        raise UserInputError(f"train.validation_examples = {examples} must be between 1 and "
                             f"{source.num_train - 1} (the training set has {source.num_train} "
                             f"examples); hold out fewer")
    images, labels = source.train_arrays
    keep = source.num_train - examples
    train = dataclasses.replace(source, num_train=keep,
                                train_arrays=(images[:keep], labels[:keep]))
    held = (images[keep:], labels[keep:])  # both splits of the validation source: in memory
    validation = dataclasses.replace(source, name=f"{source.name}_validation",
                                     num_train=examples, num_test=examples, train_arrays=held,
                                     test_arrays=held)
    return train, validation
