"""docs/ARCHITECTURE.md is the package's map: every path it names exists, and it names every
module and subpackage of keras_largebatch/ (tracked files: a module still being written is not
yet part of the map). Module docstrings name only files that exist.

Paths in the map are backticked and relative to keras_largebatch/ (`training/loop.py`,
`training/actions/`), or to the repository root when they start with a top-level folder
(`tests/...`, `bench/...`, `gin/...`). Globs and placeholders (`optimizers/ba_*_jax.py`,
`gin/experiments/<x>.gin`) are not file names and are skipped.
"""

import ast
import re
import subprocess

import pytest

from tests.cli import REPO

MAP = REPO / "docs" / "ARCHITECTURE.md"
PACKAGE = REPO / "keras_largebatch"
ROOT_FOLDERS = ("tests/", "bench/", "gin/", "docs/", "runs/", "keras_largebatch/")
PATH = re.compile(r"`([\w./-]+(?:\.py|/))`")
# A repository path inside a docstring: a package folder or tests/bench, then a .py file.
DOC_PATH = re.compile(r"(?<![\w./-])((?:training|studies|data|optimizers|schedules|layers|"
                      r"models|goodput|tests|bench)/(?:[\w-]+/)*[\w-]+\.py)\b")


def _tracked_modules() -> list[str]:
    out = subprocess.run(["git", "ls-files", "keras_largebatch"], cwd=REPO, capture_output=True,
                         text=True)
    if out.returncode != 0:  # not a git checkout (an sdist): the tree
        files = [p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")]
    else:
        files = out.stdout.split()
    return sorted(f[len("keras_largebatch/"):] for f in files if f.endswith(".py"))


def _resolve(path: str):
    return REPO / path if path.startswith(ROOT_FOLDERS) else PACKAGE / path


def named_paths(text: str) -> set[str]:
    """The backticked paths of `text` (module docstring): no globs or placeholders."""
    return {p for p in PATH.findall(text) if not re.search(r"[*<>]", p)}


def test_the_checker_reads_paths_and_skips_globs():
    text = ("`training/loop.py` and `training/actions/`, `tests/cli.py`, `optimizers/ba_*_jax.py`,"
            " `gin/experiments/<x>.gin`, `keras_largebatch.optimizers`, `x = 1`")
    assert named_paths(text) == {"training/loop.py", "training/actions/", "tests/cli.py"}


def test_every_path_the_map_names_exists():
    missing = sorted(p for p in named_paths(MAP.read_text()) if not _resolve(p).exists())
    assert missing == [], f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"


def test_the_map_names_every_module_and_subpackage():
    named = named_paths(MAP.read_text())
    modules = _tracked_modules()
    assert "training/loop.py" in modules and "main.py" in modules  # the listing works
    unnamed = [m for m in modules if not m.endswith("__init__.py") and m not in named]
    packages = sorted({m[:-len("__init__.py")] for m in modules
                       if m.endswith("/__init__.py")})
    unnamed += [p for p in packages if p not in named]
    assert unnamed == [], (f"add these to docs/ARCHITECTURE.md's 'Every module' (paths "
                           f"relative to keras_largebatch/): {unnamed}")


@pytest.mark.parametrize("module", [m for m in _tracked_modules()])
def test_module_docstrings_name_only_files_that_exist(module):
    doc = ast.get_docstring(ast.parse((PACKAGE / module).read_text())) or ""
    here = (PACKAGE / module).parent
    stale = [p for p in DOC_PATH.findall(doc)
             if not any(base.joinpath(p).exists() for base in (PACKAGE, REPO, here))]
    assert stale == [], f"keras_largebatch/{module}'s docstring names {stale}"
