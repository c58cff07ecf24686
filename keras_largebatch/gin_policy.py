"""What a gin config may do: bind configurables and include gin files, nothing else by default.

    with gin_policy.restricted(allow_imports=FLAGS.gin_allow_imports):
        gin.parse_config_files_and_bindings(files, bindings)

gin runs Python while it parses: `import some.module` in a config file imports that module (its
import side effects run), and `from __gin__ import dynamic_registration` lets a binding call any
importable function (`train.learning_rate = @os.system()` with `os.system.command = '...'`).
Study files and configs are shared between people and a sweep parses dozens of them, so by
default every `import` statement (including `from __gin__ import ...`) is refused, before the
import happens, with one line naming the statement, where it is, and the flag that allows it.
`--gin_allow_imports` (main and the sweep runner) restores gin's behaviour for users who extend
the framework with their own modules: the config file is then code that runs as the user.

Every import a config makes goes through `gin.config.ParseContext.process_import` (config files,
included files and --gin_bindings alike), so that is the one place the policy holds. One more
path runs code: gin's Python-package file reader (gin/resource_reader.py), tried for every
include it does not find as a file, turns `include 'pkg/sub/x.gin'` into
`importlib.util.find_spec('pkg.sub')`, which imports `pkg` (its `__init__` runs; the current
folder is on `sys.path` under `python -m`). Configs name files, so by default includes are
looked up as files only: that reader is off while parsing, unless --gin_allow_imports.
"""

from __future__ import annotations

import contextlib
import os

import gin

from keras_largebatch.errors import UserInputError

ALLOW_FLAG = "--gin_allow_imports"


def _where(statement) -> str:
    location = getattr(statement, "location", None)
    if location is None:
        return "in the gin config"
    name = os.path.basename(location.filename) if location.filename else "--gin_bindings"
    return f"in {name}, line {location.line_num}"


@contextlib.contextmanager
def restricted(*, allow_imports: bool = False):
    """Refuse gin `import` statements while parsing, unless `allow_imports`."""
    if allow_imports:
        yield
        return
    context = gin.config.ParseContext
    original = context.process_import

    def refuse(self, statement):
        raise UserInputError(
            f"gin config statement '{statement.format()}' {_where(statement)} would import and "
            f"run Python code; configs may only bind keras_largebatch configurables and include "
            f"gin files: remove it, or pass {ALLOW_FLAG} if you trust the file (it then runs as "
            f"you)")

    readers = gin.config._FILE_READERS  # noqa: SLF001 - gin 0.5 has no API to unregister
    saved = list(readers)
    readers[:] = [r for r in readers if r[0] is not gin.resource_reader.system_path_reader]
    context.process_import = refuse
    try:
        yield
    finally:
        context.process_import = original
        readers[:] = saved
