"""Waiting on a condition, not on the clock: tests never assume how fast this machine is.

    wait_until(lambda: flag.exists(), timeout=300, what="the first run to reach update 6")

Polls `predicate` until it is true and returns its value; fails the test naming `what` when
`timeout` seconds pass first. The timeout is a generous bound for a stuck test, not a speed
requirement: a loaded machine only makes the wait longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               poll_s: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll_s)
