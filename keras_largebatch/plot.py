"""Deprecated: the old name of `python -m keras_largebatch.studies.plot`, removed in 0.2.0.

    python -m keras_largebatch.plot runs/<run_or_sweep_dir> [--runs=...] [--out_dir=...]

runs the same command line after a FutureWarning (shown to everyone, as the command name is
what users type). Use `python -m keras_largebatch.studies.plot`; code imports
keras_largebatch.studies.
"""

import warnings

from keras_largebatch.studies.plot import run

warnings.warn(
    "python -m keras_largebatch.plot is deprecated and removed in keras_largebatch 0.2.0: "
    "use python -m keras_largebatch.studies.plot (same flags)",
    FutureWarning, stacklevel=1 if __name__ == "__main__" else 2)

if __name__ == "__main__":
    run()
