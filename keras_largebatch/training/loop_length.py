"""How many updates the next compiled call runs: `train.steps_per_loop` = K or 'auto'.

A fixed K is used as given. 'auto' sizes each call by the wall time of the last one, so that a
call lasts about `TARGET_CALL_SECONDS`:

    K_next = clamp(floor(T / t_update), 1, MAX_AUTO_STEPS),   t_update = call time / its updates

with T = 0.1 s. Why 0.1 s: the host pays ~0.3-1.4 ms per call (the Python call, the actions,
the progress bar; bench/host_overhead.py, BUILD_NOTES "Many updates per call"), so a 0.1 s call
keeps it near 1% of the time or less, while a signal, a divergence between two checks or a
user action is still acted on within about 0.1 s -- far inside a preemption notice (tens of
seconds). A 40 ms CPU step gives K = 2; a 1 ms accelerator step K = 100. The first call of a
run holds tracing, so it measures long and the next call is short; one call later K is set by
the steady step. The epoch runner still ends every call at the epoch's end and at the update
counts actions act on (epoch.py), so K changes only how often the host looks, never what is
computed: with `train.deterministic` the weights are bitwise those of K = 1 whatever the clock
said (tests/training/test_steps_per_loop.py).

'auto' means 1 in three cases. Where K > 1 is not bitwise K = 1 (BA-Momentum's chunk step) or
not allowed (`train.adapt_grad_norm_every`), so a run's numbers never depend on timing. With a
user action (`train.extra_actions`), which is promised every update unless it sets
`every_update = False` (actions/__init__.py; a fixed K > 1 runs it at call boundaries
instead). Across workers: each worker's clock would choose its own K, but the preemption sync
is a collective at every call boundary (actions/preemption_sync.py), so the workers must end
their calls at the same updates; a fixed K, the same in every worker's config, keeps them in
step. The cap of 1000 bounds a call where the clock sees only the dispatch (an accelerator
that runs ahead of the host): at most ~1000 steps between two looks.
"""

from __future__ import annotations

import math

AUTO = "auto"
TARGET_CALL_SECONDS = 0.1
MAX_AUTO_STEPS = 1000


def resolve(steps_per_loop: int | str, step, *, user_actions: bool,
            multi_worker: bool = False) -> int | str:
    """'auto' stays 'auto' for a step whose K > 1 is bitwise K = 1 (`step.exact_for_any_k`),
    in one process, without a user action that needs every update (`user_actions`: one of
    `train.extra_actions` with `every_update` True); otherwise 'auto' is 1. A number is kept."""
    if steps_per_loop == AUTO and (user_actions or multi_worker
                                   or not getattr(step, "exact_for_any_k", False)):
        return 1
    return steps_per_loop


class LoopLength:
    """`next_k()` before a call, `observe(k, seconds)` after it."""

    def __init__(self, steps_per_loop: int | str):
        self.auto = steps_per_loop == AUTO
        self.k = 1 if self.auto else int(steps_per_loop)

    @property
    def loops(self) -> bool:
        """True where calls go through the many-update function (K > 1 or 'auto')."""
        return self.auto or self.k > 1

    def next_k(self) -> int:
        return self.k

    def observe(self, k: int, seconds: float) -> None:
        """The last call ran `k` updates in `seconds` of wall time."""
        if not self.auto or k < 1 or not seconds > 0:
            return
        per_update = seconds / k
        self.k = max(1, min(MAX_AUTO_STEPS, math.floor(TARGET_CALL_SECONDS / per_update)))
