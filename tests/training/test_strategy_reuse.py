"""One MirroredStrategy per device set per process: two strategy objects over the same devices
number their collectives alike, and TensorFlow aborts the second collective with a reused
instance key ("Collective instance 100 expected type 0 and data_type 2 but got type 0 and
data_type 1") and every collective after it in the process. A process that trains more than
once (the in-process CLI tests, a notebook) must get the same strategy back."""

import tensorflow as tf

from keras_largebatch.training.strategy import make_strategy


def _all_reduce(strategy, dtype):
    @tf.function
    def reduce():
        def replica():
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.ones([], dtype))
        return strategy.run(replica)

    return strategy.experimental_local_results(reduce())[0].numpy()


def test_each_run_gets_the_process_strategy_and_collectives_do_not_collide(two_cpu_strategy):
    first = make_strategy(num_cpu_replicas=2)
    assert first is make_strategy(num_cpu_replicas=2) is two_cpu_strategy
    assert _all_reduce(first, tf.float64) == 2.0       # what a float64 metric sum does
    assert _all_reduce(make_strategy(num_cpu_replicas=2), tf.float32) == 2.0
    assert _all_reduce(two_cpu_strategy, tf.float32) == 2.0
