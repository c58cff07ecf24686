"""The gin configs the package carries, and how a config path given to a command resolves.

    python -m keras_largebatch.main --gin_file=gin/experiments/lars_fashion_mnist.gin

works from any folder, in a checkout, an editable install and an installed wheel. The configs
live in the repository's top-level `gin/` folder; a wheel carries the same files as
`keras_largebatch/gin/` (setup.py maps the folder in as package data). `root()` is the folder
that holds `gin/`: the package folder when it has one (a wheel), else the folder above it
(a checkout or an editable install, whose package is the checkout's own folder), so
configs and their includes (`include 'gin/models/cnn_fashion.gin'`) are always written
`gin/...`, as in the README.

A relative path is looked up in the current folder first, then in `root()`, then in the
`--gin_search_paths` folders (`search_paths`); `resolve` gives the first file that exists.
gin looks an include up the same way (`gin.add_config_file_search_path`), but it also asks
its Python-package reader for every folder it tries, and that reader logs
`E... resource_reader.py:55] Path not found: ...` for each miss, also when a later folder
has the file: `quiet_lookups()` drops exactly those records while gin parses. A file that is
found nowhere still fails, with gin's own error naming the folders it searched.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join("gin", "default.gin")


def root() -> str:
    """The folder holding `gin/`: the package folder (wheel) or the checkout (module doc)."""
    if os.path.isdir(os.path.join(PACKAGE_DIR, "gin")):
        return PACKAGE_DIR
    return os.path.dirname(PACKAGE_DIR)


def search_paths(extra: Sequence[str] = ()) -> list[str]:
    """Folders a relative config path is looked up in, in order: cwd, `root()`, `extra`."""
    return [os.getcwd(), root(), *extra]


def resolve(path: str, extra: Sequence[str] = ()) -> str | None:
    """The absolute path of config `path` (absolute, or relative to a search path), or None."""
    candidates = [path] if os.path.isabs(path) else [os.path.join(base, path)
                                                     for base in search_paths(extra)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def _is_reader_miss(record: logging.LogRecord) -> bool:
    return (record.funcName == "system_path_file_exists"
            and os.path.basename(record.pathname) == "resource_reader.py"
            and str(record.msg).startswith("Path not found"))


@contextlib.contextmanager
def quiet_lookups() -> Iterator[None]:
    """Drop gin's `Path not found` log records of folders tried in vain (module docstring)."""
    root_logger = logging.getLogger()

    def keep(record: logging.LogRecord) -> bool:
        return not _is_reader_miss(record)

    root_logger.addFilter(keep)
    try:
        yield
    finally:
        root_logger.removeFilter(keep)
