"""Issue 27: where a config named on the command line is found (keras_largebatch/configs.py),
that gin's lookups of other folders print nothing, and that an include never imports a Python
package unless --gin_allow_imports (keras_largebatch/gin_policy.py).

The checks of a real run from an empty folder and of an installed wheel are in
tests/test_newcomer_output.py and tests/test_wheel.py.
"""

import logging
import os
import sys

import gin
import pytest

from keras_largebatch import configs, gin_policy
from tests.cli import REPO


def test_the_configs_of_a_checkout_are_its_gin_folder():
    assert configs.root() == str(REPO)
    assert os.path.isfile(os.path.join(configs.root(), configs.DEFAULT_CONFIG))


def test_a_config_is_looked_up_in_cwd_then_the_package_then_the_search_paths(tmp_path,
                                                                            monkeypatch):
    own, extra = tmp_path / "own", tmp_path / "extra"
    (own / "gin").mkdir(parents=True)
    (own / "gin" / "default.gin").write_text("# shadows the package's\n")
    (extra / "gin").mkdir(parents=True)
    (extra / "gin" / "mine.gin").write_text("# only here\n")
    (extra / "gin" / "default.gin").write_text("# after the package's\n")

    monkeypatch.chdir(own)
    assert configs.resolve("gin/default.gin", [str(extra)]) == str(own / "gin" / "default.gin")
    assert configs.resolve("gin/mine.gin", [str(extra)]) == str(extra / "gin" / "mine.gin")
    monkeypatch.chdir(tmp_path)
    assert configs.resolve("gin/default.gin", [str(extra)]) == str(REPO / "gin" / "default.gin")
    assert configs.resolve(str(extra / "gin" / "mine.gin")) == str(extra / "gin" / "mine.gin")
    assert configs.resolve("gin/absent.gin", [str(extra)]) is None
    assert configs.search_paths(["x"]) == [str(tmp_path), str(REPO), "x"]


def test_only_gins_misses_are_dropped_while_quiet(caplog):
    from gin import resource_reader

    with caplog.at_level(logging.INFO, logger=""):
        assert not resource_reader.system_path_file_exists("gin/nowhere/x.gin")
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
            "Path not found: gin/nowhere/x.gin"]  # what gin prints without the filter
        caplog.clear()
        with configs.quiet_lookups():
            assert not resource_reader.system_path_file_exists("gin/nowhere/x.gin")
            logging.error("Path not found: something else")  # not gin's reader: kept
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
            "Path not found: something else"]
        caplog.clear()
        assert not resource_reader.system_path_file_exists("gin/nowhere/x.gin")  # filter gone
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


@pytest.fixture
def package_an_include_names(tmp_path, monkeypatch):
    """A package `klb_include_probe` on sys.path whose __init__ leaves a file when it runs."""
    ran = tmp_path / "ran"
    pkg = tmp_path / "klb_include_probe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    config = tmp_path / "config.gin"
    config.write_text("include 'klb_include_probe/sub/missing.gin'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield config, ran
    gin.clear_config()
    monkeypatch.delitem(sys.modules, "klb_include_probe", raising=False)


def test_an_include_imports_no_package_by_default(package_an_include_names):
    config, ran = package_an_include_names
    with pytest.raises(IOError, match="Unable to open file: klb_include_probe/sub/missing.gin"):
        with gin_policy.restricted(allow_imports=False):
            gin.parse_config_file(str(config))
    assert not ran.exists()
    from gin import resource_reader

    assert (resource_reader.system_path_reader,
            resource_reader.system_path_file_exists) in gin.config._FILE_READERS  # restored


def test_with_allow_imports_gin_reader_imports_the_package(package_an_include_names):
    config, ran = package_an_include_names
    with pytest.raises(IOError), gin_policy.restricted(allow_imports=True):
        gin.parse_config_file(str(config))
    assert ran.exists()  # gin's own behaviour, which the default refuses
