"""What every command line (main, studies.sweep, studies.plot, studies.batch_growth) does at
start: absl flag parsing with a bad flag as one `error:` line on stderr and exit status 2, like
every other bad input, and TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL (tf_log.py):

    app.run(main, flags_parser=cli_flags.parse)

`--help` of a console script: absl lists the flags of the main module (`sys.argv[0]`) and
prints `__main__`'s docstring; for `keras-largebatch` (a generated script, flags defined in
keras_largebatch.main) that was only `USAGE: keras-largebatch [flags]`. `show_in_help(module)`
makes the module's flags those of the program and its docstring the usage text, so the console
script prints the help of `python -m keras_largebatch.main --help`.
"""

from __future__ import annotations

import sys

from absl import flags

from keras_largebatch import tf_log


def parse(argv: list[str]) -> list[str]:
    """Parse `argv` into absl's FLAGS; on an unknown or malformed flag print one line, exit 2."""
    tf_log.install()
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}; run with --helpshort to list the flags", file=sys.stderr, flush=True)
        sys.exit(2)


def show_in_help(module) -> None:
    """`--help` of this program lists `module`'s flags and prints its docstring (module doc)."""
    program = sys.argv[0]
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(program, flag)
    main_module = sys.modules.get("__main__")
    if main_module is not None and main_module is not module and not main_module.__doc__:
        main_module.__doc__ = module.__doc__
