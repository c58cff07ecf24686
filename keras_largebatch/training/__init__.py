"""The framework's distributed training loop (TensorFlow: tf.distribute, tf.data).

    from keras_largebatch.training.loop import train
    train(run_dir="runs/x", epochs=2, batch_size=256)

`loop.py` (top-down `train` / `run`) -> `epoch.py` (one epoch) -> `steps/` (compiled steps) and
`actions/` (checkpoint, divergence, preemption, summaries after every update). See
docs/ARCHITECTURE.md for the data flow of one run.
"""
