"""A full disk is named, not a crash: one line saying where, and its own exit status (4).

    with disk_full.naming(path):          # around a write that may fill the disk
        manager.save(...)
    # -> DiskFullError("no space left on device writing <path>; free space and rerun ...")

The rule: any write of a run (checkpoints, history.json, results.json, config.gin, model.keras)
that fails because the device is full (OSError errno ENOSPC, or a TensorFlow error that wraps
it: ResourceExhaustedError / UnknownError / InternalError ... whose message says "No space left
on device") becomes a `DiskFullError` naming the path. `keras_largebatch.main` prints its line
as `error: ...` and exits with status 4 (training/signals.py). Every write is atomic (files.py,
TensorFlow's checkpoint writer), so the previous checkpoint is intact and rerunning the same
command once space is free resumes from it.

A leaf module: no TensorFlow import (TensorFlow's errors are recognised by their message).
"""

from __future__ import annotations

import contextlib
import errno
import os

ENOSPC_TEXT = os.strerror(errno.ENOSPC)  # "No space left on device"


class DiskFullError(OSError):
    """The device filled up while writing `path` (an OSError with errno ENOSPC)."""

    def __init__(self, path: str):
        super().__init__(errno.ENOSPC, ENOSPC_TEXT, path)
        self.path = path

    @property
    def line(self) -> str:
        """The one line main prints after `error: `."""
        return (f"no space left on device writing {self.path}; free space and rerun the same "
                f"command to resume")

    def __str__(self) -> str:
        return self.line


def is_disk_full(exc: BaseException | None) -> bool:
    """True if `exc`, or an exception it was raised from, says the device is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if ENOSPC_TEXT in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def naming(path: str):
    """Turn a full-disk failure inside the block into `DiskFullError(path)`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise DiskFullError(path) from e
        raise
