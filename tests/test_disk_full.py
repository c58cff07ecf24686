"""disk_full: which failures are a full disk, and the writes that name their path (in-process;
the real thing, a full tmpfs under the CLI, is tests/training/test_disk_full_cli.py)."""

import errno

import pytest
import tensorflow as tf

from keras_largebatch import files
from keras_largebatch.disk_full import DiskFullError, is_disk_full, naming
from keras_largebatch.training import checkpoint


def test_full_disk_is_recognised_in_oserrors_tf_errors_and_their_causes():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    for cls in (tf.errors.ResourceExhaustedError, tf.errors.UnknownError,
                tf.errors.InternalError):
        assert is_disk_full(cls(None, None, "ckpt-8_temp/part-0; No space left on device"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as e:
        assert is_disk_full(e)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad value"))


def test_naming_turns_a_full_disk_into_one_line_with_the_path(tmp_path):
    with pytest.raises(DiskFullError) as info:
        with naming("runs/x/results.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == ("no space left on device writing runs/x/results.json; free space "
                               "and rerun the same command to resume")
    with pytest.raises(PermissionError):
        with naming("x"):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_atomic_write_and_model_export_name_the_file_and_leave_no_temporary(tmp_path,
                                                                             monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "results.json"
    target.write_text("old\n")
    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(DiskFullError, match=f"writing {target};"):
        files.write_text_atomic(str(target), "new\n")
    monkeypatch.undo()
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json"]

    class Model:
        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"half")
            full()

    with pytest.raises(DiskFullError, match="model.keras;"):
        checkpoint.export_model(Model(), str(tmp_path / "model.keras"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
