"""The loop's side of an adaptive batch schedule (`GoodputBatch`, goodput/batch.py).

    control = GoodputControl(schedule, config=..., source=..., replicas=R, step=..., ...)
    phases = control.resume(checkpointer.state)     # the decisions a checkpoint holds
    control.enter_epoch(epoch)                      # in-graph batch of the epoch in progress
    phases = control.after_epoch(epoch, history)    # a decision, before the epoch-end save

After an epoch whose end is a decision point, the throughput model (the schedule's own
`step_time_model`, or goodput/throughput.py `fit_online` fitted to the step times of the
epochs trained with the current replica count: history's `step_time_s`, which leaves out the
first update of each epoch, the one that pays for tracing and the pipeline start) and the
noise-scale statistics of the train step give the schedule what it needs to pick the batch of
the next epochs among its candidates that this run can train with (build.check_phase_batch:
replicas, dataset, accumulation). The decision is written into the
epoch's record (history.json / results.json `goodput_decision`), to TensorBoard (`goodput/*`
scalars and an `events` line) and into the checkpoint's run state, which the epoch-end
checkpoint saves right after: a resumed run replays the decisions instead of re-measuring.

Across workers (MultiWorkerMirroredStrategy) every worker decides on its own, so every worker
must see the same numbers: a worker that chose another batch would wait in a collective of
another shape for ever. Each worker times its own updates, so the epoch's step time (and, to be
safe, the noise-scale statistics) is replaced by its mean over the workers, one collective of
three numbers at each decision, before the throughput model is fitted; history.json records
that agreed step time.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.goodput.throughput import Observation, fit_online
from keras_largebatch.studies import results as rs
from keras_largebatch.training import build
from keras_largebatch.training.strategy import workers

STATE_KEY = "batch_decisions"


class GoodputControl:
    def __init__(self, schedule, *, config, source, replicas: int, step, summaries,
                 verbose: bool, strategy=None):
        self.schedule, self.config, self.source = schedule, config, source
        self.replicas, self.step, self.summaries, self.verbose = replicas, step, summaries, verbose
        self.run_state = None
        self._mean = None
        if strategy is not None and len(workers()[0]) > 1:

            @tf.function
            def mean(values):  # the same collective on every worker, at the same epoch end
                local = strategy.run(lambda: tf.identity(values))
                return strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None)

            self._mean = mean

    def agreed(self, step_time: float, stats: dict) -> tuple[float, dict]:
        """This epoch's step time and the statistics, averaged over the workers."""
        if self._mean is None:
            return step_time, stats
        keys = ("grad_sqr", "grad_trace")
        known = [stats[k] is not None for k in keys]
        local = [step_time] + [stats[k] if ok else 0.0 for k, ok in zip(keys, known)]
        out = self._mean(tf.constant(local, tf.float64)).numpy().tolist()
        return out[0], {**stats, **{k: (v if ok else None)
                                   for k, v, ok in zip(keys, out[1:], known)}}

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
        if history and history[-1].get(rs.STEP_TIME_S):
            history[-1][rs.STEP_TIME_S], stats = self.agreed(history[-1][rs.STEP_TIME_S], stats)
        model = self.schedule.step_time_model
        if model is None:
            observations = self.observations(history)
            if not observations:
                return None
            model = fit_online(observations)
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
