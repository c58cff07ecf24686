"""The repository's Markdown stands alone: every relative link or image it shows, and every
repository file it names in backticks (`gin/studies/bn_batch.gin`, `results/lars/summary.md`),
exists in the repository.

Placeholders (`runs/<study>`, `gin/studies/*.gin`) are not file names and are skipped.
"""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
# A backticked repository path with a file extension; runs/*.md also name results/... files
# relative to themselves.
NAMED = re.compile(r"`((?:gin|keras_largebatch|bench|tests|docs|runs|results|\.ci)/[\w./-]+"
                   r"\.(?:gin|py|md|png|csv|toml|json|sh))`")


def _tracked(pattern: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (an sdist): fall back to the tree
        return sorted(p.relative_to(REPO).as_posix() for p in REPO.rglob(pattern)
                      if ".venv" not in p.parts)
    return out.stdout.split()


MARKDOWN = _tracked("*.md")


def missing_references(doc: str, text: str, exists) -> list[str]:
    """The link targets and backticked paths of `text` (the file `doc`) that `exists` denies."""
    here = Path(doc).parent
    missing = []
    for target in LINK.findall(text):
        path = target.split("#")[0]
        if not path or re.match(r"[a-z][a-z0-9+.-]*:", path):  # an anchor or a URL
            continue
        if not exists((here / path).as_posix()):
            missing.append(target)
    for path in NAMED.findall(text):
        if not (exists(path) or exists((here / path).as_posix())):
            missing.append(path)
    return missing


def test_the_checker_finds_what_is_missing_and_skips_urls_and_anchors():
    text = ("![a](results/x.png) [b](#anchor) [c](https://example.org/a.md) "
            "`gin/studies/there.gin` `gin/studies/gone.gin` `runs/<study>` [d](../up.md#s)")
    there = {"runs/results/x.png", "gin/studies/there.gin"}
    assert missing_references("runs/RESULTS.md", text, lambda p: p in there) == [
        "../up.md#s", "gin/studies/gone.gin"]


@pytest.mark.parametrize("doc", MARKDOWN)
def test_every_file_a_document_shows_or_names_exists(doc):
    text = (REPO / doc).read_text()
    assert missing_references(doc, text, lambda p: (REPO / p).exists()) == []

