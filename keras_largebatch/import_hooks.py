"""Run code around or after the first import of a top-level module (a post-import hook, as
PEP 369 proposed), without importing it:

    when_imported("keras", after=register)                  # registration.py
    when_imported("tensorflow", around=quiet_startup)       # tf_log.py

A finder put first on `sys.meta_path` answers the import of `name` with the spec the other
finders give, with its loader wrapped: the wrapper puts the module's own loader back on the
module, runs its `exec_module` inside `around()` (a context manager factory) and then calls
`after()`. The finder removes itself once the module has loaded; an import that fails leaves
it in place for the next try. Errors in `around` / `after` propagate from the import.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
from collections.abc import Callable


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self._loader
        with self._hook.around():
            self._loader.exec_module(module)
        self._hook.remove()
        self._hook.after()


class _Hook(importlib.abc.MetaPathFinder):
    def __init__(self, name, around, after):
        self.name, self.around, self.after = name, around, after

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, self)
                return spec
        return None

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def when_imported(name: str, *, around: Callable | None = None,
                  after: Callable[[], None] | None = None) -> None:
    """Hook the first import of top-level module `name` (not yet imported; module doc)."""
    if any(isinstance(f, _Hook) and f.name == name and f.around is around and f.after is after
           for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Hook(name, around or contextlib.nullcontext,
                                  after or (lambda: None)))
