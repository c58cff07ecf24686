"""The loop's side of an adaptive batch schedule (`GoodputBatch`, goodput/batch.py).

    control = GoodputControl(schedule, config=..., source=..., replicas=R, step=..., ...)
    phases = control.resume(checkpointer.state)     # the decisions a checkpoint holds
    control.enter_epoch(epoch)                      # in-graph batch of the epoch in progress
    phases = control.after_epoch(epoch, history)    # a decision, before the epoch-end save

After an epoch whose end is a decision point, the throughput model (the schedule's own
`step_time_model`, or goodput/throughput.py `fit_online` fitted to the step times of the
epochs trained with the current replica count: history's `step_time_s`, which leaves out the
first update of each epoch, the one that pays for tracing and the pipeline start; on several
replicas with the measured time of one gradient all-reduce as its known constant,
training/allreduce_timing.py) and the noise-scale statistics of the train step give the
schedule what it needs to pick the batch of the next epochs among its candidates that this run
can train with (build.check_phase_batch: replicas, dataset, accumulation). The decision is
written into the epoch's record (history.json / results.json `goodput_decision`), to
TensorBoard (`goodput/*` scalars and an `events` line) and into the checkpoint's run state,
which the epoch-end checkpoint saves right after: a resumed run replays the decisions instead
of re-measuring.

Across workers (MultiWorkerMirroredStrategy) every worker decides on its own, so every worker
must see the same numbers: a worker that chose another batch would wait in a collective of
another shape for ever. Each worker times its own updates and all-reduce, so the epoch's step
time, the all-reduce's time (and, to be safe, the noise-scale statistics) are replaced by their
means over the workers, one collective of four numbers at each decision, before the throughput
model is fitted; history.json records the agreed step time and all-reduce time
(`allreduce_time_s`).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.goodput.throughput import Observation, fit_online
from keras_largebatch.studies import results as rs
from keras_largebatch.training import build
from keras_largebatch.training.allreduce_timing import AllReduceTimer
from keras_largebatch.training.strategy import workers

STATE_KEY = "batch_decisions"


class GoodputControl:
    def __init__(self, schedule, *, config, source, replicas: int, step, summaries,
                 verbose: bool, strategy=None, variables=None):
        self.schedule, self.config, self.source = schedule, config, source
        self.replicas, self.step, self.summaries, self.verbose = replicas, step, summaries, verbose
        self.run_state = None
        self._mean = None
        # The all-reduce's time is the step's known constant (none on one replica, nothing to
        # measure with a step_time_model given).
        self._timer = None
        if (strategy is not None and variables is not None and replicas > 1
                and schedule.step_time_model is None):
            self._timer = AllReduceTimer(strategy, variables)
        if strategy is not None and len(workers()[0]) > 1:

            @tf.function
            def mean(values):  # the same collective on every worker, at the same epoch end
                local = strategy.run(lambda: tf.identity(values))
                return strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)

            self._mean = mean

    def agreed(self, values: dict) -> dict:
        """`values` (numbers or None) averaged over the workers; None stays None."""
        if self._mean is None:
            return dict(values)
        keys = sorted(values)  # the same order on every worker
        local = [0.0 if values[k] is None else float(values[k]) for k in keys]
        out = self._mean(tf.constant(local, tf.float64)).numpy().tolist()
        return {k: (None if values[k] is None else v) for k, v in zip(keys, out)}

    def resume(self, run_state) -> list:
        """Take the decisions from the restored run state (none on a fresh run); the phases."""
        self.run_state = run_state
        saved = run_state.extra.get(STATE_KEY)
        if saved:
            self.schedule.load_state(saved)
        return build.plan_phases(self.config, self.source, self.replicas)

    def enter_epoch(self, epoch: int) -> None:
        self.schedule.enter_epoch(epoch)

    def valid_candidates(self) -> list[int]:
        out = []
        for batch in self.schedule.candidates(granularity=self.replicas):
            try:
                build.check_phase_batch(self.config, self.source, self.replicas, batch)
            except UserInputError:
                continue
            out.append(batch)
        return out

    def observations(self, history: list[dict]) -> list[Observation]:
        rows = [h for h in history if h.get(rs.STEP_TIME_S)]
        same = [h for h in rows if h.get(rs.REPLICAS_KEY, self.replicas) == self.replicas]
        return [Observation(self.replicas, h[rs.BATCH_SIZE], None, 0, h[rs.STEP_TIME_S])
                for h in (same or rows)]

    def after_epoch(self, epoch: int, history: list[dict]) -> list | None:
        """A decision after 0-based `epoch` if one is due (not after the last); new phases."""
        if epoch + 1 >= self.config.optimization.epochs or not self.schedule.decides_after(epoch):
            return None
        stats = self.step.noise_scale.stats.values()
        measured = {"grad_sqr": stats["grad_sqr"], "grad_trace": stats["grad_trace"],
                    rs.STEP_TIME_S: history[-1].get(rs.STEP_TIME_S) if history else None,
                    rs.ALLREDUCE_S: self._timer.measure() if self._timer else None}
        if measured[rs.STEP_TIME_S] or measured[rs.ALLREDUCE_S] is not None:
            measured = self.agreed(measured)
        stats = {**stats, "grad_sqr": measured["grad_sqr"], "grad_trace": measured["grad_trace"]}
        if history and measured[rs.STEP_TIME_S]:
            history[-1][rs.STEP_TIME_S] = measured[rs.STEP_TIME_S]
        if history and measured[rs.ALLREDUCE_S] is not None:
            history[-1][rs.ALLREDUCE_S] = measured[rs.ALLREDUCE_S]
        model = self.schedule.step_time_model
        if model is None:
            observations = self.observations(history)
            if not observations:
                return None
            model = fit_online(observations, fixed=measured[rs.ALLREDUCE_S] or 0.0)
        decision = self.schedule.decide(
            epoch + 1, self.valid_candidates(), model,
            workers=self.replicas, g2=stats["grad_sqr"], trace=stats["grad_trace"])
        self.run_state.extra[STATE_KEY] = self.schedule.state()
        history[-1][rs.GOODPUT_DECISION] = dataclasses.asdict(decision)
        self.summaries.scalars({"goodput/next_batch_size": decision.batch_size,
                                "goodput/predicted_throughput": decision.throughput,
                                "goodput/efficiency": decision.efficiency,
                                "goodput/goodput": decision.goodput}, step=epoch + 1)
        self.summaries.text("events", decision.line(), step=epoch + 1)
        if self.verbose:
            print(decision.line(), flush=True)
        return build.plan_phases(self.config, self.source, self.replicas)
