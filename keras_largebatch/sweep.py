"""Deprecated: the old name of `python -m keras_largebatch.studies.sweep`, removed in 0.2.0.

    python -m keras_largebatch.sweep --gin_file=gin/studies/<study>.gin [--sweep_dir=...]

runs the same command line after a FutureWarning (shown to everyone, as the command name is
what users type). Use `python -m keras_largebatch.studies.sweep`; code imports
keras_largebatch.studies.
"""

import warnings

from keras_largebatch.studies.sweep import run

warnings.warn(
    "python -m keras_largebatch.sweep is deprecated and removed in keras_largebatch 0.2.0: "
    "use python -m keras_largebatch.studies.sweep (same flags)",
    FutureWarning, stacklevel=1 if __name__ == "__main__" else 2)

if __name__ == "__main__":
    run()
