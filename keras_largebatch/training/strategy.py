"""Pick the tf.distribute strategy for this process.

    make_strategy()                      2+ GPUs: MirroredStrategy over them; one device (one
                                         GPU or the CPU): TensorFlow's default strategy
    make_strategy(num_cpu_replicas=2)    2 logical CPU devices, MirroredStrategy over them
    TF_CONFIG={"cluster": ..., "task": ...} in the environment -> MultiWorkerMirroredStrategy

One device runs under the default strategy (`tf.distribute.get_strategy()`, what model.fit
uses), not a MirroredStrategy over that device: the same code (`strategy.run`, `scope`,
`reduce`, replica-context all-reduces that are the identity), the same numbers and checkpoints
(a checkpoint moves between replica counts either way: elastic resume), without the mirrored
variables and the distributed iterator, which cost ~5% of the default CNN's step on a CPU
(BUILD_NOTES "Many updates per call"). `num_cpu_replicas=1` still gives a MirroredStrategy over
one device (tests compare it with two).

Under TF_CONFIG the strategy waits for the other workers at most `connect_timeout_s` (default
300; a line every 10 s names the workers still awaited, then `error: ...`, exit 2: cluster.py),
and every collective (gradient all-reduce, checkpoint, ...) fails after `collective_timeout_s`
(default 120) instead of blocking for ever when a peer hangs: the job then ends with exit
status 5 and is resumed by restarting every worker. The timeout must exceed the longest time
one worker can spend outside collectives while the others wait (its slowest step, an
evaluation or a checkpoint write that the others finish sooner); None waits for ever.

Logical CPU devices can only be created before TensorFlow initialises its runtime, so call this
before anything else creates a device (the loop does, before building anything; listing the
physical devices, as tf_log.py does at import, creates none).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.training import cluster


def _tf_config() -> dict | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        if not isinstance(workers, list) or not workers:
            raise ValueError
        task = cfg["task"]
        if task["type"] != "worker" or not 0 <= int(task["index"]) < len(workers):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise UserInputError(
            f"TF_CONFIG is malformed ({raw!r}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            '"index": i}} or unset it for single-machine training'
        ) from None
    for address in workers:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserInputError(
                f"TF_CONFIG worker address {address!r} is not host:port (port 1-65535); "
                f"write every worker as e.g. \"10.0.0.1:12345\"")
    return cfg


def _use_logical_cpus(n: int) -> list[str]:
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if not current or len(current) != n:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * n
            )
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have < n:
                raise UserInputError(
                    f"num_cpu_replicas={n} but TensorFlow already started with {have} CPU "
                    f"device(s); set it before any TensorFlow op runs (fresh process)"
                ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")][:n]


_MIRRORED: dict[tuple[str, ...], tf.distribute.MirroredStrategy] = {}


def mirrored(devices) -> tf.distribute.MirroredStrategy:
    """The process's one MirroredStrategy over `devices`, created on first use.

    Each strategy object numbers its collective all-reduces from the same start, and two
    strategies over the same devices give two different collectives the same instance key:
    TensorFlow then aborts the second ("Collective instance N expected type ... but got ...") and
    every collective after it in the process ("Restart your program to reset"). So a process
    that trains more than once (tests in-process, a notebook, a sweep in one Python) must reuse
    the strategy; variables, datasets and functions are made under it per run as usual.
    """
    key = tuple(devices)
    if key not in _MIRRORED:
        _MIRRORED[key] = tf.distribute.MirroredStrategy(list(key))
    return _MIRRORED[key]


def make_strategy(*, num_cpu_replicas: int = 0, connect_timeout_s: float = 300,
                  collective_timeout_s: float | None = 120) -> tf.distribute.Strategy:
    """MultiWorkerMirrored if TF_CONFIG is set, else Mirrored over GPUs or CPU devices.

    `num_cpu_replicas` > 0 forces that many logical CPU replicas (testing multi-replica code on
    a CPU machine; per worker under TF_CONFIG). `connect_timeout_s` and `collective_timeout_s`
    apply under TF_CONFIG only (see the module docstring).
    """
    if num_cpu_replicas < 0:
        raise UserInputError(f"num_cpu_replicas must be >= 0; got {num_cpu_replicas}")
    connect_timeout_s = validate.positive("make_strategy.connect_timeout_s", connect_timeout_s)
    if collective_timeout_s is not None:
        collective_timeout_s = validate.positive(
            "make_strategy.collective_timeout_s", collective_timeout_s,
            fix="give seconds > 0, or None to wait for ever")
    cfg = _tf_config()
    if cfg is not None:
        if num_cpu_replicas:
            _use_logical_cpus(num_cpu_replicas)
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout_s)
        return cluster.start(
            lambda: tf.distribute.MultiWorkerMirroredStrategy(communication_options=options),
            cfg["cluster"]["worker"], int(cfg["task"]["index"]), timeout_s=connect_timeout_s)
    if num_cpu_replicas:
        return mirrored(_use_logical_cpus(num_cpu_replicas))
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return mirrored([d.name for d in gpus])
    return tf.distribute.get_strategy()  # one device: no replica machinery (module docstring)


def workers() -> tuple[list[str], int]:
    """TF_CONFIG's worker addresses and this worker's index (([], 0) without TF_CONFIG)."""
    cfg = _tf_config()
    return ([], 0) if cfg is None else (list(cfg["cluster"]["worker"]), int(cfg["task"]["index"]))


def collective_timeout_s(strategy: tf.distribute.Strategy) -> float | None:
    """The collective timeout `strategy` was made with (None: none)."""
    options = getattr(strategy.extended, "_communication_options", None)
    return getattr(options, "timeout_seconds", None)


def is_chief() -> bool:
    """True on the process that writes summaries, results and the primary checkpoint."""
    cfg = _tf_config()
    return cfg is None or int(cfg["task"]["index"]) == 0
