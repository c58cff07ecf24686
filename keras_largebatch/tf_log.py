"""A command line's TensorFlow start-up lines held to TF_CPP_MIN_LOG_LEVEL, errors kept.

    tf_log.install()     # cli_flags.parse: every command line, before TensorFlow loads

TensorFlow 2.21's shared libraries log through absl before absl's logging is initialised,
and those lines ignore TF_CPP_MIN_LOG_LEVEL: every process printed, once per library,

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796609386.909906    7794 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1796609386.910194    7794 cudart_stub.cc:31] Could not find cuda drivers ...

`install()` sets TF_CPP_MIN_LOG_LEVEL to 2 unless the user set it (TensorFlow's meaning:
0 shows everything, 1 drops INFO, 2 also WARNING, 3 also ERROR) and, while TensorFlow's
`__init__` runs (import_hooks.py), sends file descriptor 2 through a pipe whose reader thread
drops what that level drops: glog-format lines (`I0000 ... file.cc:N] ...`) below it, absl's
pre-initialisation notice above, and the second line of TensorFlow's CPU-instructions INFO
message (`To enable the following instructions: AVX2 ...`) right after its first. The
window also covers TensorFlow's look for devices (`tf.config.list_physical_devices()`, which
creates no device, so logical devices can still be configured after it), where a machine
without an NVIDIA driver gets `E... cuda_platform.cc:52] failed call to cuInit: ... (303)`:
that ERROR line is dropped only when TensorFlow has just said, in the same window, `Could not
find cuda drivers on your machine, GPU will not be used` (no driver, so the failed cuInit
says nothing new); with a driver it is shown. Every other line -- ERROR lines, Python
warnings, tracebacks -- passes at once and in order; the descriptor is restored as soon as
the window ends, also on an exception. Lines TensorFlow logs later follow
TF_CPP_MIN_LOG_LEVEL by themselves (`dataset.cc:997] Input of
GeneratorDatasetOp::Dataset will not be optimized`, a WARNING of tf.distribute's
multi-device iterator, was shown only because the package used to import TensorFlow before
main set the level). TF_CPP_MIN_LOG_LEVEL=0 shows every line.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

from keras_largebatch.import_hooks import when_imported

DEFAULT_LEVEL = "2"
_GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [\w.-]+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written"
_CPU_GUARD = "cpu_feature_guard.cc"
_CPU_GUARD_NEXT = "To enable the following instructions:"
_NO_DRIVER = "Could not find cuda drivers on your machine"
_CUINIT = "failed call to cuInit"


def level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (not a number: 0, everything shown)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


class LineFilter:
    """Decides line by line what `level` drops (module docstring); remembers the
    CPU-instructions message's first line and TensorFlow's no-driver line."""

    def __init__(self, min_level: int):
        self.min_level = min_level
        self._after_cpu_guard = False
        self._no_driver = False

    def keep(self, line: str) -> bool:
        after_cpu_guard, self._after_cpu_guard = self._after_cpu_guard, False
        match = _GLOG.match(line)
        if match:
            message = line[match.end():]
            self._no_driver = self._no_driver or message.startswith(_NO_DRIVER)
            if self._no_driver and message.startswith(_CUINIT):
                return False
            dropped = _SEVERITY[match.group(1)] < self.min_level
            self._after_cpu_guard = dropped and _CPU_GUARD in line[:match.end()]
            return not dropped
        if self.min_level >= 1 and line.startswith(_ABSL_NOTICE):
            return False
        return not (after_cpu_guard and line.startswith(_CPU_GUARD_NEXT))


def _forward(read_fd: int, write_fd: int, line_filter: LineFilter) -> None:
    pending = b""
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = [line + b"\n" for line in lines
                if line_filter.keep(line.decode("utf-8", "replace"))]
        if kept:
            os.write(write_fd, b"".join(kept))
    if pending and line_filter.keep(pending.decode("utf-8", "replace")):
        os.write(write_fd, pending)
    os.close(read_fd)


@contextlib.contextmanager
def filtered_stderr(min_level: int) -> Iterator[None]:
    """File descriptor 2 through `LineFilter(min_level)` while the block runs."""
    if min_level < 1:
        yield
        return
    sys.stderr.flush()
    try:
        original = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to filter
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    reader = threading.Thread(target=_forward, args=(read_fd, original, LineFilter(min_level)),
                              name="tf-startup-log", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the reader sees EOF
        reader.join(timeout=30)
        if not reader.is_alive():
            os.close(original)


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    with filtered_stderr(level()):
        yield  # TensorFlow's __init__ runs here
        sys.modules["tensorflow"].config.list_physical_devices()  # no device created


def install() -> None:
    """Default TF_CPP_MIN_LOG_LEVEL to 2 and filter TensorFlow's import (module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LEVEL)
    if "tensorflow" not in sys.modules:
        when_imported("tensorflow", around=_quiet_import)
