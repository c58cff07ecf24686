"""The checkpoints on disk, found from the files themselves, and which of them can be read.

    numbers(directory)                -> [30, 20, 10]  every ckpt-N with an .index or .data file
    damage(prefix)                    -> None, or why ckpt-N cannot be read
    state_note(directory, numbers)    -> None, or what is wrong with the `checkpoint` state file
    write_state(directory, [20, 30])  the state file naming these (newest last), as TF writes it

The rules (checkpoint.py applies them when a run resumes):

- The checkpoints of a run are the `ckpt-N.index` / `ckpt-N.data-*` files in its checkpoints
  folder, not what the `checkpoint` state file says: a deleted, garbled or wrong state file
  does not hide them (a warning says what was wrong with it). `ckpt-N_temp/` folders are
  TensorFlow's staging area of a write that never finished, not checkpoints.
- A checkpoint is damaged if its index is missing or any tensor in it cannot be read back
  (TensorFlow checks every tensor's CRC32C while reading). Damage is found by reading the files
  only, before anything is restored into the run's objects.
- `write_state` rebuilds the state file that `tf.train.CheckpointManager` reads at start, so
  that its clean-up (delete the oldest beyond `max_to_keep`) only ever counts checkpoints that
  are known to be intact; a broken newer checkpoint can never push an intact one out.
"""

from __future__ import annotations

import os
import re

import tensorflow as tf

from keras_largebatch import files

PREFIX = "ckpt"
STATE_FILE = "checkpoint"
_FILE = re.compile(rf"^{PREFIX}-(\d+)\.(index|data-.*)$")
_STATE_LINE = re.compile(r'^\w+:\s*("[^"]*"|[-+0-9.eE]+)$')


def prefix(directory: str, number: int) -> str:
    return os.path.join(directory, f"{PREFIX}-{number}")


def numbers(directory: str) -> list[int]:
    """Numbers of the checkpoints that have files in `directory`, newest first."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted({int(m.group(1)) for m in map(_FILE.match, names) if m}, reverse=True)


def damage(path: str) -> str | None:
    """None if checkpoint `path` (a prefix) reads back whole, else a one-line reason."""
    name = os.path.basename(path)
    if not os.path.isfile(path + ".index"):
        return f"{name}.index is missing"
    try:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as e:  # noqa: BLE001 - any failure to read the files is damage
        text = str(e).strip()
        return (text.splitlines()[0][:160] if text else type(e).__name__)
    return None


def state_note(directory: str, found: list[int]) -> str | None:
    """What is wrong with the state file, given the checkpoint numbers `found` on disk."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return f"{path} is missing"
    try:
        with open(path, errors="strict") as f:
            lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        lines = ["?"]
    named = [line.split('"')[1] for line in lines if line.startswith("model_checkpoint_path:")
             and _STATE_LINE.match(line)]
    if not all(_STATE_LINE.match(line) for line in lines) or len(named) != 1:
        return f"{path} is unreadable"
    match = re.fullmatch(rf"{PREFIX}-(\d+)", os.path.basename(named[0]))
    if match is None or int(match.group(1)) not in found:
        return f"{path} names {named[0]}, which does not exist"
    return None


def write_state(directory: str, kept: list[int]) -> None:
    """Write the state file naming checkpoints `kept` (oldest first; the last is the latest),
    with the file times TensorFlow's CheckpointManager needs to manage (delete) them."""
    times = []
    for number in kept:
        index = prefix(directory, number) + ".index"
        times.append(os.path.getmtime(index) if os.path.exists(index) else 0.0)
    floor = min(times) - 1.0
    times = [max(t, floor + 0.5) for t in times]
    lines = [f'model_checkpoint_path: "{PREFIX}-{kept[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{PREFIX}-{n}"' for n in kept]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in times]
    lines += [f"last_preserved_timestamp: {floor!r}"]
    files.write_text_atomic(os.path.join(directory, STATE_FILE), "\n".join(lines) + "\n")
