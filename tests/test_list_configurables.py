"""`--list_configurables` lists every bindable name: each configurable and each parameter a gin
file may bind (`train.epochs`), never the ones main passes itself (`train.run_dir`)."""

from keras_largebatch import config
from keras_largebatch.training.run_config import SETTINGS


def test_every_setting_and_schedule_parameter_is_listed_and_nothing_main_passes():
    names = set(config.list_configurables())
    for name in SETTINGS:
        assert f"train.{name}" in names, name
    for name in ("train", "AdaBatch.interval_epochs", "GoodputBatch.max_batch_size",
                 "make_strategy.num_cpu_replicas", "SGD.momentum", "cnn_fashion.dropout"):
        assert name in names, name
    for name in config.NOT_BINDABLE:
        assert f"train.{name}" not in names, name
