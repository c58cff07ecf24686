"""Fast checks of training/cluster.py and the new make_strategy arguments (no TF_CONFIG, no
second process): argument validation, the TCP probe, the lost-worker line."""

import socket

import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.training import cluster
from keras_largebatch.training.strategy import make_strategy


@pytest.mark.parametrize("name, value", [("connect_timeout_s", 0), ("connect_timeout_s", None),
                                         ("collective_timeout_s", -1),
                                         ("collective_timeout_s", "2")])
def test_timeouts_are_checked(name, value):
    with pytest.raises(UserInputError, match=f"make_strategy.{name}="):
        make_strategy(**{name: value})


def test_probe_tells_listening_from_closed_ports():
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        workers = [f"127.0.0.1:{s.getsockname()[1]}" for s in (closed, listening, closed)]
        assert cluster.accepts(workers[1])
        assert cluster.unreachable(workers, 0) == [f"{workers[2]} (index 2)"]  # not itself


def test_lost_worker_line_names_the_peer_update_and_checkpoint():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        workers = ["127.0.0.1:1", f"127.0.0.1:{closed.getsockname()[1]}"]
        error = tf.errors.UnavailableError(None, None, "Graph execution error:\n\nCollective "
                                           "ops is aborted by: Socket closed\nmore")
        lost = cluster.lost_worker(error, workers=workers, index=0, updates=120,
                                   checkpoint="runs/x/checkpoints/ckpt-100", timeout_s=120)
    assert lost.line == (
        f"lost contact with worker {workers[1]} (index 1) during training after update 120 "
        f"(UnavailableError: Socket closed); the last checkpoint is runs/x/checkpoints/ckpt-100;"
        f" restart every worker with the same command to resume")
