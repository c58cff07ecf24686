"""TCMalloc for the training processes this package starts (the sweep's runs; `make run` and
`make test` set it in the Makefile).

TensorFlow's CPU allocator takes every tensor buffer from the C allocator. glibc's malloc hands
buffers above its mmap threshold (128 KiB, rising to at most 32 MiB) back to the kernel when they
are freed, so each training step faults fresh zeroed pages in again for its activations and
gradients: on the batch-augmentation experiment ~3.6 million page faults and a quarter of the
process time in the kernel per epoch (BUILD_NOTES.md "Allocator"). TCMalloc keeps freed pages
for reuse. It changes no number: the final weights are bitwise the same (bench/allocator.py
checks the sha256 of both runs and prints the speed ratio measured side by side).

    LD_PRELOAD=libtcmalloc_minimal.so.4 python -m keras_largebatch.main ...   # by hand
    KERAS_LARGEBATCH_MALLOC=system python -m keras_largebatch.studies.sweep ...  # opt out

The library is the Debian package libtcmalloc-minimal4 (`make install` installs it). It has to
be preloaded before the process starts, so this module only builds child environments; it
never re-executes the current process.
"""

from __future__ import annotations

import ctypes.util
import os
from collections.abc import Mapping

TCMALLOC = "libtcmalloc_minimal.so.4"
OPT_OUT_VAR = "KERAS_LARGEBATCH_MALLOC"  # "system": leave the C allocator alone


def tcmalloc_available() -> bool:
    """Whether the dynamic loader can find TCMalloc (ldconfig's cache, as LD_PRELOAD does)."""
    return ctypes.util.find_library("tcmalloc_minimal") is not None


def with_tcmalloc(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a child training process, with TCMalloc first in LD_PRELOAD.

    Unchanged when `env` opts out (KERAS_LARGEBATCH_MALLOC=system), already preloads it, or the
    library is not installed (then the child simply runs on glibc's malloc).
    """
    env = dict(env)
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    if (env.get(OPT_OUT_VAR, "").lower() == "system"
            or any(os.path.basename(p) == TCMALLOC for p in preload)
            or not tcmalloc_available()):
        return env
    env["LD_PRELOAD"] = ":".join([TCMALLOC, *preload])
    return env


def preloaded() -> bool:
    """Whether TCMalloc is mapped into this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            return any(TCMALLOC in line for line in maps)
    except OSError:
        return False
