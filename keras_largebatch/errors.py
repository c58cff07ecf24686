"""The one exception type for bad user input.

Every user-facing mistake (a bad gin binding, an unknown dataset, a batch size that does not
split across replicas, ...) raises `UserInputError` with a single line that names the bad value
and says how to fix it. `keras_largebatch.main` prints that first line, exits with status 2 and
leaves the run directory untouched. Library code used directly from Python sees an ordinary
`ValueError` subclass.

The message is not forced to one line here: Keras re-raises exceptions from `Layer.call` as
`type(e)(original message + traceback context)`, which must keep working.
"""


class UserInputError(ValueError):
    """Bad input from the user: one line naming the value and the fix."""

    @property
    def line(self) -> str:
        """The one-line message (first line; frameworks may append context below it)."""
        text = str(self)
        return text.splitlines()[0] if text else ""
