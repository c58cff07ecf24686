"""Atomic file writes: a temporary file in the same folder, then a rename.

    write_json_atomic("runs/x/results.json", results)

A kill at any moment leaves either the old file or the new one, never half a file (there is no
fsync: this protects against killed processes, not against power loss). Used for every file a
run or a sweep writes besides TensorFlow's own (checkpoints, TensorBoard events). A full disk
raises `disk_full.DiskFullError` naming the path (the old file, if any, is left as it was).
"""

from __future__ import annotations

import json
import os
import tempfile

from keras_largebatch.disk_full import naming


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` via a temporary file and rename."""
    with naming(path):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared/read
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def write_json_atomic(path: str, data) -> None:
    """`data` as indented JSON with sorted keys (NaN / Infinity allowed), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

