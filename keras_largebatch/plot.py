"""The old name of `python -m keras_largebatch.studies.plot`, kept for existing commands:

    python -m keras_largebatch.plot runs/<run_or_sweep_dir> [--runs=...] [--out_dir=...]

runs the same command line. New code imports keras_largebatch.studies.
"""

from keras_largebatch.studies.plot import run

if __name__ == "__main__":
    run()
