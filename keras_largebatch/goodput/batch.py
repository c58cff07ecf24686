"""`GoodputBatch`: the global batch chosen by measurement, not by a hand-set schedule.

    schedule = GoodputBatch(min_batch_size=128, max_batch_size=4096)
    train(..., batch_schedule=schedule, lr_scaling="adascale")   # gin: @GoodputBatch()

Pollux (Qiao et al., OSDI 2021, Eq. 2-5): at each decision the run picks, among the candidate
global batches B in [min_batch_size, max_batch_size], the one maximising

    goodput(B) = throughput(B) x E(B)
    throughput(B) = B / step_time(B)                     throughput.py, fitted to this run
    E(B) = (B_noise + B0) / (B_noise + B)                 adascale.py, B0 the first batch

with B_noise = tr(Sigma) / |G|^2 the smoothed gradient noise scale (noise_scale.py). For the
additive model step_time = a + c B / W the optimum of B / ((a + c B / W)(B_noise + B)) is
B* = sqrt(a W B_noise / c): a fixed cost per update (an all-reduce over a slow link, a GPU's
launch overhead) and a noisy gradient both argue for larger batches; when the step time grows
in proportion to the batch (a = 0: one CPU process) the smallest batch wins.

`step_time_model=(a, c)` gives the throughput model instead (seconds per update = a + c x
per-replica batch: e.g. fitted offline by bench/cluster.py for the target cluster); decisions
then depend on the gradient statistics alone.

Candidates are a geometric grid of `num_candidates` points between the bounds, each rounded
down to a multiple of `granularity` (the loop passes the replica count) and then checked by the
loop against the dataset, the replicas and the accumulation cap. Decisions are taken at epoch
ends, every `decide_every_epochs` epochs, so a batch never changes inside an epoch and the
loop's phase mechanism rebuilds the pipeline (no retrace). The decisions so far are this
schedule's state: the loop stores them in each checkpoint and reloads them on resume, so a
resumed run follows the batches the original chose (bitwise with `train.deterministic`).

Host-side `batch_size(epoch)` answers from the decisions (the last one holds for later epochs);
in-graph `batch_size_at(epoch)`, which a learning-rate rule reads inside the compiled step,
returns the batch of the epoch in progress, held in a variable the loop sets at each epoch.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import ops

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.goodput.adascale import statistical_efficiency
from keras_largebatch.goodput.throughput import CostModel
from keras_largebatch.schedules.batch import BATCH_SIZE_FIX, BatchSchedule


@dataclasses.dataclass(frozen=True)
class Decision:
    """One decision: the batch from `epoch` on, and the predictions it maximised."""

    epoch: int
    batch_size: int
    throughput: float          # predicted samples / s
    efficiency: float          # E(B), progress per sample relative to B0
    goodput: float             # throughput x efficiency
    b_noise: float | None      # the noise scale it used

    def line(self) -> str:
        noise = "n/a" if self.b_noise is None else f"{self.b_noise:.1f}"
        return (f"GoodputBatch: global batch {self.batch_size} from epoch {self.epoch} "
                f"(B_noise {noise}, predicted {self.throughput:.1f} samples/s x efficiency "
                f"{self.efficiency:.3f} = goodput {self.goodput:.1f})")


def optimal_batch(candidates, model: CostModel, *, workers: int, g2: float, trace: float,
                  base_batch: int) -> tuple[int, float, float]:
    """argmax over `candidates` of goodput: (batch, its throughput, its efficiency)."""
    batches = np.asarray(sorted(set(int(b) for b in candidates)), dtype=np.float64)
    times = np.array([model.step_time(workers, b, None, 0) for b in batches])
    throughput = batches / np.maximum(times, 1e-12)
    efficiency = statistical_efficiency(batches, g2, trace, base_batch)
    best = int(np.argmax(throughput * efficiency))
    return int(batches[best]), float(throughput[best]), float(efficiency[best])


@keras.saving.register_keras_serializable(package="keras_largebatch")
class GoodputBatch(BatchSchedule):
    """The batch that maximises predicted goodput, decided at epoch ends (module docstring)."""

    adaptive = True  # the loop asks it to `decide`; phases are known only up to now

    def __init__(self, min_batch_size: int, max_batch_size: int,
                 initial_batch_size: int | None = None, decide_every_epochs: int = 1,
                 num_candidates: int = 16, step_time_model=None):
        self._min = validate.whole("min_batch_size", min_batch_size, fix=BATCH_SIZE_FIX)
        self._max = validate.whole("max_batch_size", max_batch_size, fix=BATCH_SIZE_FIX)
        if self._max < self._min:
            raise UserInputError(f"GoodputBatch.max_batch_size={max_batch_size!r} is below "
                                 f"min_batch_size={min_batch_size!r}; give max >= min")
        initial = self._min if initial_batch_size is None else initial_batch_size
        self._initial = validate.whole("initial_batch_size", initial, fix=BATCH_SIZE_FIX)
        if not self._min <= self._initial <= self._max:
            raise UserInputError(f"GoodputBatch.initial_batch_size={initial!r} is outside "
                                 f"[{self._min}, {self._max}]; give a batch within the bounds")
        self._every = validate.whole("decide_every_epochs", decide_every_epochs,
                                     fix="give a whole number of epochs >= 1")
        self._num = validate.whole("num_candidates", num_candidates,
                                   fix="give a whole number of grid points >= 1")
        self._model = self._check_model(step_time_model)
        self.decisions: dict[int, int] = {0: self._initial}
        self._current = None  # keras.Variable, created on first in-graph use

    @staticmethod
    def _check_model(model):
        if model is None:
            return None
        ok = (isinstance(model, (list, tuple)) and len(model) == 2
              and all(validate.is_real(v) and math.isfinite(v) and v >= 0 for v in model))
        if not ok or not any(model):
            raise UserInputError(f"GoodputBatch.step_time_model={model!r} must be (a, c): "
                                 "seconds per update = a + c x per-replica batch, both >= 0 "
                                 "and not both 0; or None to fit it to the run's step times")
        return (float(model[0]), float(model[1]))

    @property
    def step_time_model(self) -> CostModel | None:
        """A known throughput model, or None (fitted online: throughput.fit_online)."""
        if self._model is None:
            return None
        return CostModel(a=self._model[0], c=self._model[1], alpha=0.0, beta=0.0)

    # ---- the schedule --------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"min_batch_size": self._min, "max_batch_size": self._max,
                "initial_batch_size": self._initial, "decide_every_epochs": self._every,
                "num_candidates": self._num,
                "step_time_model": None if self._model is None else list(self._model)}

    def _batch_size(self, epoch):
        return self.decisions[max(e for e in self.decisions if e <= epoch)]

    def _lr_multiplier(self, epoch):
        return 1.0

    def _batch_size_at(self, epoch):
        return ops.cast(self.current_variable(), epoch.dtype)

    def _lr_multiplier_at(self, epoch):
        return ops.ones_like(epoch)

    def current_variable(self):
        """The batch of the epoch in progress, for in-graph readers (set by `enter_epoch`)."""
        if self._current is None:
            self._current = keras.Variable(float(self._initial), dtype="float32",
                                           trainable=False, name="goodput_batch")
        return self._current

    def enter_epoch(self, epoch: int) -> None:
        """Host-side, before epoch `epoch` trains: the in-graph batch follows the decisions."""
        self.current_variable().assign(float(self._batch_size(float(epoch))))

    # ---- decisions -----------------------------------------------------------------------
    @property
    def initial_batch_size(self) -> int:
        return self._initial

    def decides_after(self, epoch: int) -> bool:
        """Whether a decision is due once 0-based `epoch` has finished."""
        return (epoch + 1) % self._every == 0

    def candidates(self, granularity: int = 1) -> list[int]:
        """The grid: `num_candidates` geometric points in [min, max], multiples of
        `granularity` (rounded down; the bounds included when they are multiples)."""
        g = max(1, int(granularity))
        points = (np.geomspace(self._min, self._max, num=max(self._num, 2))
                  if self._max > self._min else np.array([self._min]))
        out = {int(math.floor(p / g + 1e-9)) * g for p in points}
        return sorted(b for b in out if self._min <= b <= self._max and b > 0)

    def decide(self, epoch: int, candidates, model: CostModel, *, workers: int,
               g2: float | None, trace: float | None) -> Decision:
        """Record the batch for epochs from `epoch` on (see the module docstring)."""
        if not candidates:
            raise UserInputError(f"GoodputBatch has no valid batch in [{self._min}, "
                                 f"{self._max}] for this run (replicas and dataset); widen the "
                                 f"bounds")
        if g2 is None or trace is None or not (g2 > 0 or trace > 0):
            g2, trace, b_noise = 1.0, 0.0, None  # no statistics: E(B) = B0 / B
        else:
            b_noise = trace / g2 if g2 > 0 else float("inf")
        batch, throughput, efficiency = optimal_batch(
            candidates, model, workers=workers, g2=g2, trace=trace, base_batch=self._initial)
        self.decisions = {e: b for e, b in self.decisions.items() if e < epoch}
        self.decisions[epoch] = batch
        return Decision(epoch, batch, throughput, efficiency, throughput * efficiency,
                        None if b_noise is None or not math.isfinite(b_noise) else b_noise)

    def state(self) -> dict:
        """The decisions, for a checkpoint (JSON keys are strings)."""
        return {str(e): b for e, b in sorted(self.decisions.items())}

    def load_state(self, state: dict) -> None:
        self.decisions = {int(e): int(b) for e, b in state.items()}
