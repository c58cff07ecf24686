"""The one exception type for bad user input.

Every user-facing mistake (a bad gin binding, an unknown dataset, a batch size that does not
split across replicas, ...) raises `UserInputError` with a single line that names the bad value
and says how to fix it. `keras_largebatch.main` prints that line, exits with status 2 and leaves
the run directory untouched. Library code used directly from Python sees an ordinary
`ValueError` subclass.
"""


class UserInputError(ValueError):
    """Bad input from the user: one line naming the value and the fix."""

    def __init__(self, message: str):
        if "\n" in message:
            raise AssertionError(f"UserInputError must be one line: {message!r}")
        super().__init__(message)
