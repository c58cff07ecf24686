"""IDX reading against the real Fashion-MNIST files and damaged copies of them."""

import gzip
import os

import numpy as np
import pytest

from keras_largebatch.data.idx import read_idx
from keras_largebatch.data.sources import FASHION_MNIST_DIR
from keras_largebatch.errors import UserInputError

TRAIN_LABELS = os.path.join(FASHION_MNIST_DIR, "train-labels-idx1-ubyte.gz")


def test_reads_real_labels_with_known_class_balance():
    labels = read_idx(TRAIN_LABELS)
    assert labels.shape == (60000,)
    # Fashion-MNIST is balanced: exactly 6000 training images per class (Xiao et al. 2017).
    np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)


def test_parses_header_by_hand(tmp_path):
    path = tmp_path / "tiny-idx3-ubyte"
    data = np.arange(2 * 3 * 4, dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
                     + (4).to_bytes(4, "big") + data.tobytes())
    np.testing.assert_array_equal(read_idx(str(path)), data.reshape(2, 3, 4))


def test_truncated_payload_names_file_and_fix(tmp_path):
    with gzip.open(TRAIN_LABELS) as f:
        raw = f.read()
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(UserInputError, match=r"train-labels-idx1-ubyte.gz holds 59900 .*60000.*"
                                             r"apt-get install --reinstall"):
        read_idx(str(path))


def test_cut_gzip_stream_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.gz"
    with open(TRAIN_LABELS, "rb") as f:
        path.write_bytes(f.read()[:5000])
    with pytest.raises(UserInputError, match="unreadable"):
        read_idx(str(path))


def test_missing_and_wrong_magic(tmp_path):
    with pytest.raises(UserInputError, match="missing"):
        read_idx(str(tmp_path / "nope.gz"))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)  # 0x0d = float, not uint8
    with pytest.raises(UserInputError, match="not a uint8 IDX file"):
        read_idx(str(bad))
