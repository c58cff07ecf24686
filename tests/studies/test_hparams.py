"""studies/hparams.py: a study's runs as TensorBoard HParams sessions, read back the way the
HParams dashboard reads them (tensorboard's event multiplexer, data provider and the hparams
plugin's ListSessionGroups handler) and as raw plugin metadata from the event files."""

import glob
import math

import pytest

from keras_largebatch.studies import grid, hparams
from keras_largebatch.studies.metrics import run_metrics

EPOCHS = [{"epoch": 1, "test_accuracy": 0.5, "train_loss": 1.0},
          {"epoch": 2, "test_accuracy": 0.75, "train_loss": 0.5},
          {"epoch": 3, "test_accuracy": 0.625, "train_loss": 0.25}]
COMPLETED = {"status": "completed", "wall_time_s": 12.5, "epochs": EPOCHS}
DIVERGED = {"status": "diverged", "wall_time_s": 3.0, "divergence": {"epoch": 2, "step": 9},
            "epochs": [EPOCHS[0], {"epoch": 2, "test_accuracy": 0.1, "train_loss": math.nan}]}


def _study():
    return grid.sweep(variants={"fixed": [], "ada": ["train.batch_schedule = @AdaBatch()"]},
                      grid={"train.batch_size": [32, 64], "train.lr_scaling": ["linear", None]},
                      metric="median_last5_test_accuracy", seeds=[0, 1])


def _write_sweep(sweep_dir, study, runs: dict) -> None:
    hparams.write_experiment(study, str(sweep_dir))
    specs = {s.name: s for s in study.runs}
    for name, results in runs.items():
        hparams.write_run(study, specs[name], str(sweep_dir / name), results,
                          run_metrics(results))


def _dashboard(logdir) -> dict:
    """What the HParams dashboard lists: the experiment, and {session: (hparams, metrics)}."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(logdir=str(logdir),
                               data_provider=data_provider.MultiplexerDataProvider(mux, logdir))
    backend = backend_context.Context(tb)
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, include_metrics=True,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS])
    groups = list_session_groups.Handler(context.RequestContext(), backend, "", request).run()
    sessions = {}
    for g in groups.session_groups:
        values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                  for k, v in g.hparams.items()}
        sessions[g.name] = (values, {m.name.tag: m.value for m in g.metric_values},
                            [s.name for s in g.sessions])
    return sessions


def test_a_runs_hyperparameters_are_its_grid_point():
    study = _study()
    spec = next(s for s in study.runs if s.name == "ada__batch_size=64__lr_scaling=None__seed=1")
    assert hparams.hparam_values(study, spec) == {
        "variant": "ada", "train.batch_size": 64, "train.lr_scaling": "None", "seed": 1}


def test_the_metrics_are_the_studys(tmp_path):
    study = _study()
    assert hparams.metric_values(study, COMPLETED, run_metrics(COMPLETED)) == {
        "study/final_test_accuracy": 0.625, "study/best_test_accuracy": 0.75,
        "study/training_time_s": 12.5,
        "study/median_last5_test_accuracy": 0.625}  # of 0.5 0.75 0.625; no diverged epoch
    diverged = hparams.metric_values(study, DIVERGED, run_metrics(DIVERGED))
    assert diverged["study/diverged_epoch"] == 2 and diverged["study/training_time_s"] == 3.0


def test_a_study_selected_on_validation_also_shows_test_at_that_choice():
    """Validation peaks at epoch 1 (0.9 > 0.8): the dashboard gets that and epoch 1's test
    accuracy 0.7, not the best test accuracy 0.8."""
    study = grid.sweep(grid={"train.batch_size": [32]}, metric="best_validation_accuracy")
    results = {"status": "completed", "wall_time_s": 4.0, "epochs": [
        {"epoch": 1, "train_loss": 0.5, "validation_accuracy": 0.9, "test_accuracy": 0.7},
        {"epoch": 2, "train_loss": 0.4, "validation_accuracy": 0.8, "test_accuracy": 0.8}]}
    values = hparams.metric_values(study, results, run_metrics(results))
    assert values["study/best_validation_accuracy"] == 0.9
    assert values["study/test_accuracy_at_best_validation"] == 0.7
    assert {"study/best_validation_accuracy", "study/test_accuracy_at_best_validation"} <= set(
        hparams.metric_tags(study))


def test_the_dashboard_lists_every_finished_run_with_its_values(tmp_path):
    study = _study()
    runs = {"fixed__batch_size=32__lr_scaling=linear__seed=0": COMPLETED,
            "ada__batch_size=64__lr_scaling=None__seed=1": DIVERGED}
    _write_sweep(tmp_path, study, runs)
    sessions = _dashboard(tmp_path)
    assert set(sessions) == set(runs)
    values, metrics, members = sessions["fixed__batch_size=32__lr_scaling=linear__seed=0"]
    assert values == {"variant": "fixed", "train.batch_size": 32.0,
                      "train.lr_scaling": "linear", "seed": 0.0}
    assert members == ["fixed__batch_size=32__lr_scaling=linear__seed=0/tensorboard/hparams"]
    assert metrics == pytest.approx({
        "study/final_test_accuracy": 0.625, "study/best_test_accuracy": 0.75,
        "study/training_time_s": 12.5, "study/median_last5_test_accuracy": 0.625})
    values, metrics, _ = sessions["ada__batch_size=64__lr_scaling=None__seed=1"]
    assert values["train.lr_scaling"] == "None" and values["variant"] == "ada"
    assert metrics["study/diverged_epoch"] == 2


def test_the_experiment_names_every_hyperparameter_and_metric(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    study = _study()
    _write_sweep(tmp_path, study, {})
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "hparams"),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    infos = {h.name: h for h in experiment.hparam_infos}
    assert list(infos) == ["variant", "train.batch_size", "train.lr_scaling", "seed"]
    assert [v.string_value for v in infos["variant"].domain_discrete.values] == ["ada", "fixed"]
    assert [v.number_value for v in infos["train.batch_size"].domain_discrete.values] == [32, 64]
    assert infos["train.batch_size"].type == api_pb2.DATA_TYPE_FLOAT64
    assert [v.string_value for v in infos["train.lr_scaling"].domain_discrete.values] == [
        "None", "linear"]
    assert [m.name.tag for m in experiment.metric_infos] == [
        "study/final_test_accuracy", "study/best_test_accuracy", "study/diverged_epoch",
        "study/training_time_s", "study/median_last5_test_accuracy"]


def test_rewriting_replaces_the_previous_summaries(tmp_path):
    study = _study()
    runs = {"fixed__batch_size=32__lr_scaling=linear__seed=0": COMPLETED}
    _write_sweep(tmp_path, study, runs)
    _write_sweep(tmp_path, study, runs)
    assert len(glob.glob(str(tmp_path / "*" / "tensorboard" / "hparams" / "events.*"))) == 1
    assert len(glob.glob(str(tmp_path / "tensorboard" / "hparams" / "events.*"))) == 1
