"""The one exception type for bad user input.

Every user-facing mistake (a bad gin binding, an unknown dataset, a batch size that does not
split across replicas, ...) raises `UserInputError` with a single line that names the bad value
and says how to fix it. `keras_largebatch.main` prints that first line, exits with status 2 and
leaves the run directory untouched. Library code used directly from Python sees an ordinary
`ValueError` subclass.

The message is not forced to one line here: Keras re-raises exceptions from `Layer.call` as
`type(e)(original message + traceback context)`, which must keep working.
"""

import contextlib

from keras_largebatch.disk_full import is_disk_full


class UserInputError(ValueError):
    """Bad input from the user: one line naming the value and the fix."""

    @property
    def line(self) -> str:
        """The one-line message (first line; frameworks may append context below it)."""
        text = str(self)
        return text.splitlines()[0] if text else ""


def describe(error: BaseException, what: str) -> str:
    """One line for an unexpected exception raised while `what`: its type, first line, a fix."""
    if isinstance(error, OSError) and error.filename:
        return (f"{what} failed: {error.strerror or type(error).__name__}: {error.filename}; "
                f"check that the path exists and is writable, or choose another --run_dir")
    text = str(error).strip()
    first = text.splitlines()[0] if text else "(no message)"
    return (f"{what} failed: {type(error).__name__}: {first}; check the value it names in the "
            f"gin config or flags")


@contextlib.contextmanager
def as_user_error(what: str):
    """Turn any exception raised inside into a one-line `UserInputError` (see `describe`).

    The framework loop wraps its whole set-up (everything before the first update) in this, so
    a bad value anywhere (a Keras optimizer argument, a damaged file in the run dir, ...) ends
    as one `error:` line and exit status 2, not a traceback.
    """
    try:
        yield
    except UserInputError:
        raise
    except Exception as e:  # noqa: BLE001 - every set-up failure becomes one line
        if is_disk_full(e):  # a full disk keeps its own line and exit status (disk_full.py)
            raise
        raise UserInputError(describe(e, what)) from e
