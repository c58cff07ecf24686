"""Test-only fault injection for the real CLI: actions that kill or signal the process at a
chosen update, and a kill in the middle of a checkpoint write. Nothing of this is in the package.

    python -m tests.faults kill_at_step=25 -- --gin_file=gin/tests/tiny.gin --run_dir=...
    python -m tests.faults signal_at_step=35:SIGTERM -- ...
    python -m tests.faults kill_in_save=46 -- ...
    python -m tests.faults stop_at_step=60 -- ...              (SIGSTOP: a hung process)
    python -m tests.faults hold_at_step=6:<flag file> -- ...   (write the flag, then sleep)

The faults reach the loop as `train(extra_actions=[...])` (the public hook for user actions,
keras_largebatch/training/actions/), added to the call main makes, so the run's config.gin and
every gin binding stay those of the plain command: a chain of faulted runs resumes like any
rerun of the same command.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import signal
import sys
import time

from keras_largebatch.training.actions import Action, StepOutput


class KillAtStep(Action):
    """SIGKILL this process right after global update `at` (before any save at that update)."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, out: StepOutput):
        if not out.epoch_end and out.updates == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(Action):
    """Send this process `signum` right after global update `at` (as a scheduler would)."""

    def __init__(self, at: int, signum: int = signal.SIGTERM):
        self.at, self.signum = at, signum

    def __call__(self, out: StepOutput):
        if not out.epoch_end and out.updates == self.at:
            os.kill(os.getpid(), self.signum)


class StopAtStep(Action):
    """SIGSTOP this process right after global update `at`: a hung peer (its sockets stay open
    and accept connections, it answers nothing). The test that sets it SIGKILLs it later."""

    def __init__(self, at: int):
        self.at = at

    def __call__(self, out: StepOutput):
        if not out.epoch_end and out.updates == self.at:
            os.kill(os.getpid(), signal.SIGSTOP)


class HoldAtStep(Action):
    """After global update `at`, write this process's PID to `flag` and sleep (a run that is
    still going: tests start a second process meanwhile, then kill this one)."""

    def __init__(self, at: int, flag: str):
        self.at, self.flag = at, flag

    def __call__(self, out: StepOutput):
        if not out.epoch_end and out.updates == self.at:
            with open(self.flag, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)


def truncate_and_kill(save_path) -> None:
    """Leave ckpt-N half written, as a kill during TensorFlow's write would, and die."""
    for f in glob.glob(f"{save_path}.*"):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_save(at: int) -> None:
    """While saving ckpt-`at`: after TF wrote the files and before the state file names them,
    truncate them to half and SIGKILL (patches CheckpointManager.save in this process only)."""
    import tensorflow as tf

    original = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, check_interval=True, options=None):
        if checkpoint_number == at:
            options = tf.train.CheckpointOptions(experimental_write_callbacks=[truncate_and_kill])
        return original(self, checkpoint_number=checkpoint_number,
                        check_interval=check_interval, options=options)

    tf.train.CheckpointManager.save = save


def parse(specs: list[str]) -> list[Action]:
    """`kill_at_step=N`, `signal_at_step=N:SIG`, `stop_at_step=N`, `hold_at_step=N:FLAG`,
    `kill_in_save=N` -> actions (or patches)."""
    actions = []
    for spec in specs:
        name, _, value = spec.partition("=")
        if name == "kill_at_step":
            actions.append(KillAtStep(int(value)))
        elif name == "signal_at_step":
            at, _, sig = value.partition(":")
            actions.append(SignalAtStep(int(at), signal.Signals[sig or "SIGTERM"]))
        elif name == "stop_at_step":
            actions.append(StopAtStep(int(value)))
        elif name == "hold_at_step":
            at, _, flag = value.partition(":")
            actions.append(HoldAtStep(int(at), flag))
        elif name == "kill_in_save":
            kill_in_save(int(value))
        else:
            raise SystemExit(f"tests.faults: unknown fault {spec!r}")
    return actions


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else 0
    actions = parse(argv[:split])
    from keras_largebatch import config
    from keras_largebatch import main as cli

    register = config.register_configurables

    def with_faults():
        configured = register()
        train = functools.partial(configured.train, extra_actions=actions)
        return dataclasses.replace(configured, train=train)

    config.register_configurables = with_faults
    sys.argv = [sys.argv[0], *argv[split + 1:]]
    cli.run()


if __name__ == "__main__":
    main()
