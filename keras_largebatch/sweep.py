"""The old name of `python -m keras_largebatch.studies.sweep`, kept for existing commands:

    python -m keras_largebatch.sweep --gin_file=gin/studies/<study>.gin [--sweep_dir=...]

runs the same command line. New code imports keras_largebatch.studies.
"""

from keras_largebatch.studies.sweep import run

if __name__ == "__main__":
    run()
