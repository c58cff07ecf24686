"""Run the real CLI's entry point inside the test process: no TensorFlow start-up per run.

    proc = run_main(*TINY, "--gin_bindings=train.epochs = 0", f"--run_dir={tmp}/run")
    proc.returncode, proc.stdout, proc.stderr      # as tests/cli.py's run_cli returns them

What runs is `keras_largebatch.main.run()`, the console script itself:
`app.run(main, flags_parser=cli_flags.parse)` with `sys.argv = ["keras-largebatch", *args]`
(with `faults`, `tests.faults.main()`, what `python -m tests.faults` runs):
absl flags parsed by the same parser, gin parsed by the same `main`, `as_user_error` and every
`_fail` on the same path. `SystemExit` becomes the exit status; stdout and stderr are captured
at the file descriptors (1 and 2), so C++ log lines land in them as in a child process.

Around each run, the process-global state a run changes is reset or restored: absl flags
(unparsed, so a flag from one run never leaks into the next), gin's config and search paths,
Keras' session, TensorFlow's op determinism and global seed, Python's and NumPy's RNG, the
warning filters (Python's defaults, as in a fresh interpreter, not pytest's "error"),
`os.environ`, the current folder, `sys.path`, modules imported from the run's PYTHONPATH, and
`config.register_configurables` (which tests.faults replaces).

What needs a real process stays in one (tests/cli.py): SIGKILL faults, several workers
(TF_CONFIG with a live peer), a device layout other than the suite's 2 logical CPUs
(tests/conftest.py), TCMalloc at start-up, and the lock held by another process. A run that
would end the process (`os._exit`, the multi-worker hard exit) raises here instead.
tests/test_cli.py runs a bad input and a completed run both ways and compares them: the same
status, lines, files and weights; only a fresh process's TensorFlow start-up lines differ.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .cli import REPO

PROGRAM = "keras-largebatch"
# Faults (tests/faults.py) that leave the process alive; the others kill or stop it.
IN_PROCESS_FAULTS = ("signal_at_step",)


class WouldEndTheProcess(RuntimeError):
    """The run called os._exit: that case belongs in a real process (tests/cli.py)."""


def run_main(*args: str, env: dict | None = None, cwd: Path | None = None,
             faults: list[str] | tuple = ()) -> subprocess.CompletedProcess:
    """`keras-largebatch ARGS` in this process; same arguments and result as cli.run_cli.

    `env`: variables set for the run (then restored). `cwd`: the folder it runs from (default
    the repo root, like run_cli). `faults`: only signal_at_step=N:SIG (tests/faults.py)."""
    from keras_largebatch import main as cli

    for spec in faults:
        if not spec.startswith(IN_PROCESS_FAULTS):
            raise ValueError(f"fault {spec!r} ends the process; use cli.run_cli")
    if faults:  # `python -m tests.faults SPECS -- ARGS`: the same main, faults injected
        from . import faults as faults_module

        argv, entry = ["tests.faults", *faults, "--", *args], faults_module.main
    else:
        argv, entry = [PROGRAM, *args], cli.run
    with _isolated(env, cwd), _captured() as out:
        code = _exit_code(lambda: _argv_run(argv, entry))
    return subprocess.CompletedProcess(argv, code, out["stdout"], out["stderr"])


def _argv_run(argv: list[str], entry) -> None:
    saved = sys.argv
    sys.argv = argv
    try:
        entry()
    finally:
        sys.argv = saved


def _exit_code(fn) -> int:
    """Call fn; its SystemExit as a process's exit status (sys.exit(None) is 0, a string 1)."""
    try:
        fn()
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)  # as the interpreter does for sys.exit("text")
        return 1
    except KeyboardInterrupt:  # an uncaught SIGINT: Python's own exit
        return -signal.SIGINT
    except WouldEndTheProcess:
        raise
    except BaseException:  # an uncaught exception: traceback on stderr, status 1
        import traceback

        traceback.print_exc()
        return 1
    return 0


@contextlib.contextmanager
def _isolated(env: dict | None, cwd: Path | None):
    """Reset / restore what a run changes in the process (module docstring)."""
    import gin
    import keras
    from absl import flags
    from absl import logging as absl_logging
    from tensorflow.python.eager import context
    from tensorflow.python.framework import config as tf_config

    from keras_largebatch import config

    env = dict(env or {})
    saved_environ = dict(os.environ)
    saved_cwd, saved_path = os.getcwd(), list(sys.path)
    saved_modules = set(sys.modules)
    saved_search = list(gin.config._LOCATION_PREFIXES)  # noqa: SLF001 - no public getter
    saved_rng = random.getstate(), np.random.get_state()  # noqa: NPY002 - the global one
    determinism = tf_config.is_op_determinism_enabled()
    seed, policy = context.global_seed(), keras.mixed_precision.global_policy().name
    verbosity = absl_logging.get_verbosity()
    added_paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    was_parsed = flags.FLAGS.is_parsed()
    saved_exit, register = os._exit, config.register_configurables  # tests.faults patches it

    def refuse_exit(status):
        raise WouldEndTheProcess(f"os._exit({status}): run this case in a real process")

    os.environ.update({"TF_CPP_MIN_LOG_LEVEL": "3", **env})  # run_cli's environment
    # PYTHONPATH reaches a child's sys.path; here, its entries go first on sys.path.
    sys.path[:0] = added_paths
    os.chdir(cwd or REPO)
    flags.FLAGS.unparse_flags()
    gin.clear_config()
    os._exit = refuse_exit
    try:
        with warnings.catch_warnings():
            _python_default_warning_filters()
            yield
    finally:
        os._exit, config.register_configurables = saved_exit, register
        flags.FLAGS.unparse_flags()
        if was_parsed:
            flags.FLAGS([PROGRAM])  # defaults, parsed, as before the run
        gin.clear_config()
        gin.config._LOCATION_PREFIXES[:] = saved_search  # noqa: SLF001
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy(policy)
        if determinism != tf_config.is_op_determinism_enabled():
            (tf_config.enable_op_determinism if determinism
             else tf_config.disable_op_determinism)()
        context.set_global_seed(seed)
        random.setstate(saved_rng[0])
        np.random.set_state(saved_rng[1])  # noqa: NPY002
        absl_logging.set_verbosity(verbosity)
        for name in set(sys.modules) - saved_modules:  # a module a trusted gin file imported
            where = getattr(sys.modules[name], "__file__", None) or ""
            if any(where.startswith(p) for p in added_paths):
                del sys.modules[name]
        sys.path[:] = saved_path
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)


def _python_default_warning_filters() -> None:
    """The filters of a fresh interpreter (no -W): what a child process would apply."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                     ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


@contextlib.contextmanager
def _captured():
    """File descriptors 1 and 2 (and sys.stdout / sys.stderr, and the log handlers that write
    to them) into temporary files; yields a dict that holds the texts afterwards."""
    out: dict[str, str] = {}
    files = {1: tempfile.TemporaryFile(), 2: tempfile.TemporaryFile()}
    old_py = sys.stdout, sys.stderr
    for stream in old_py:
        stream.flush()
    saved_fds = {fd: os.dup(fd) for fd in files}
    for fd, f in files.items():
        os.dup2(f.fileno(), fd)
    new_py = [io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                               errors="backslashreplace", line_buffering=True)
              for fd in files]
    sys.stdout, sys.stderr = new_py
    handlers = [h for h in _stream_handlers() if h.stream in old_py]
    streams = {h: h.stream for h in handlers}
    for h in handlers:
        h.stream = new_py[old_py.index(h.stream)]
    try:
        yield out
    finally:
        for stream in new_py:
            stream.flush()
        for h, stream in streams.items():
            h.stream = stream
        sys.stdout, sys.stderr = old_py
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            files[fd].seek(0)
            out[name] = files[fd].read().decode("utf-8", errors="backslashreplace")
            files[fd].close()


def _stream_handlers() -> list[logging.StreamHandler]:
    """Stream handlers of the root logger, absl's and TensorFlow's loggers."""
    from absl import logging as absl_logging

    found = []
    for logger in (logging.getLogger(), logging.getLogger("absl"),
                   logging.getLogger("tensorflow")):
        found += [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    absl_handler = absl_logging.get_absl_handler().python_handler
    return [*found, absl_handler]
