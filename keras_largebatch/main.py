"""Run one experiment from gin files.

    python -m keras_largebatch.main                                  # gin/default.gin
    python -m keras_largebatch.main --gin_file=gin/experiments/<x>.gin \\
        --gin_bindings='train.epochs = 3' --run_dir=runs/my_run
    keras-largebatch ...                                             # same flags, same --help

A config named `gin/...` (and every include) is found from any folder: the current folder
first, then the configs the package carries, then --gin_search_paths (keras_largebatch/configs.py).

Rerunning with the same --run_dir resumes from its latest checkpoint. Bad input (a bad flag, gin
text, value, run dir or data file: anything that fails before the first update) ends with one
line on stderr naming the value and the fix, exit status 2, and no change to the run dir. gin
`import` statements are refused unless --gin_allow_imports (keras_largebatch/gin_policy.py).
Other exit statuses: 0 completed, 1 crashed, 3 diverged, 4 disk full (one line naming the path;
rerun once space is free to resume), 5 lost contact with another worker (multi-worker; restart
every worker to resume), 128+N stopped by signal N after saving a checkpoint (SIGTERM 143,
SIGINT 130; rerun to resume) - see training/signals.py.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

from keras_largebatch import configs

flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'train.epochs = 3'.")
flags.DEFINE_multi_string("gin_search_paths", [], "Extra folders for gin file includes.")
flags.DEFINE_string("run_dir", None, "Output folder (default runs/<config>-<time>).")
flags.DEFINE_bool("overwrite", False, "Delete --run_dir's previous run and start afresh.")
flags.DEFINE_bool("list_configurables", False, "Print every bindable name and exit.")
flags.DEFINE_bool("dry_run", False, "Check the config and build everything; train nothing.")
flags.DEFINE_bool("gin_allow_imports", False,
                  "Let gin files and bindings import Python modules (the config is then code "
                  "that runs as you); refused by default.")
FLAGS = flags.FLAGS


def _fail(message: str, status: int = 2, hard: bool = False) -> None:
    """Print one `error:` line and exit; `hard`: os._exit, for a TensorFlow thread that is
    stuck waiting for other workers and would block a normal exit (training/cluster.py)."""
    line = message.splitlines()[0] if message else "unknown error"
    print(f"error: {line}", file=sys.stderr, flush=True)
    if hard:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _resolve_gin_files(names: list[str]) -> list[str]:
    """Each --gin_file as an absolute path (configs.resolve), or one error line."""
    found = []
    for name in names:
        path = configs.resolve(name, FLAGS.gin_search_paths)
        if path is None:
            where = ", ".join(configs.search_paths(FLAGS.gin_search_paths))
            _fail(f"--gin_file={name} is not a file (looked in {where}); name a gin file, "
                  f"e.g. --gin_file=gin/experiments/lars_fashion_mnist.gin")
        found.append(path)
    return found


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
    import gin
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # gin logs every include lookup at INFO/ERROR

    from keras_largebatch import config, gin_policy
    from keras_largebatch.disk_full import DiskFullError, is_disk_full
    from keras_largebatch.errors import UserInputError
    from keras_largebatch.training.cluster import LostWorker
    from keras_largebatch.training.signals import (
        EXIT_DISK_FULL,
        EXIT_LOST_WORKER,
        SignalCatcher,
        exit_status,
    )

    configured = config.register_configurables()
    if FLAGS.list_configurables:
        print("\n".join(config.list_configurables()))
        return
    gin_files = _resolve_gin_files(FLAGS.gin_file or [configs.DEFAULT_CONFIG])
    for path in configs.search_paths(FLAGS.gin_search_paths):
        gin.add_config_file_search_path(path)
    try:
        with gin_policy.restricted(allow_imports=FLAGS.gin_allow_imports), \
                configs.quiet_lookups():
            gin.parse_config_files_and_bindings(gin_files, FLAGS.gin_bindings)
    except UserInputError as e:
        _fail(e.line)
    except Exception as e:  # gin raises many types (ValueError, TokenError, ...) for bad text
        _fail(f"bad gin config: {str(e).splitlines()[0]} (check --gin_file / "
              f"--gin_bindings; --list_configurables shows valid names)")
    if FLAGS.run_dir is not None and not FLAGS.run_dir.strip():
        _fail("--run_dir is empty; give a folder path, e.g. --run_dir=runs/my_run")
    name = os.path.splitext(os.path.basename(gin_files[-1]))[0]
    run_dir = FLAGS.run_dir or os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        catcher = SignalCatcher()
        with catcher.installed():  # SIGTERM/SIGINT: checkpoint at a step boundary
            result = configured.train(run_dir=run_dir, overwrite=FLAGS.overwrite,
                                      dry_run=FLAGS.dry_run, config_text=gin.config_str(),
                                      operative_config=gin.operative_config_str,
                                      components=configured.components, signals=catcher)
        if FLAGS.dry_run:
            print(result)
    except UserInputError as e:
        _fail(e.line, hard=getattr(e, "exit_hard", False))
    except LostWorker as e:  # a peer died or hung mid-run (multi-worker)
        _fail(e.line, EXIT_LOST_WORKER, hard=True)
    except TypeError as e:  # a binding of the wrong type reaching a library function
        _fail(f"bad value in the gin config: {str(e).splitlines()[0]}")
    except Exception as e:  # a full disk anywhere in the run: its own line and status
        if not is_disk_full(e):
            raise
        line = e.line if isinstance(e, DiskFullError) else DiskFullError(run_dir).line
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(EXIT_DISK_FULL)
    sys.exit(exit_status(result))  # 0 done, 3 diverged, 128+N interrupted by N


def run() -> None:
    """Console script `keras-largebatch`."""
    from keras_largebatch import cli_flags

    cli_flags.show_in_help(sys.modules[__name__])  # --help as `python -m keras_largebatch.main`
    app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
    run()
