"""Read IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

Format: magic = 0x0000 0x08 <ndim> (0x08 = unsigned byte), then ndim big-endian uint32 sizes,
then prod(sizes) bytes. A file that is missing, has a wrong magic number or is shorter than its
header says raises `UserInputError` with the path and how to reinstall it.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from keras_largebatch.errors import UserInputError

REINSTALL_HINT = "reinstall it with: apt-get install --reinstall dataset-fashion-mnist"


def read_idx(path: str, *, hint: str = REINSTALL_HINT) -> np.ndarray:
    """Return the uint8 array stored in the IDX file `path` (`.gz` is decompressed)."""
    if not os.path.exists(path):
        raise UserInputError(f"dataset file {path} is missing; {hint}")
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise UserInputError(f"dataset file {path} is unreadable ({e}); {hint}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserInputError(f"dataset file {path} is not a uint8 IDX file; {hint}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserInputError(f"dataset file {path} is truncated (short header); {hint}")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise UserInputError(
            f"dataset file {path} holds {len(raw) - header} data bytes but its header says "
            f"{expected}; {hint}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
