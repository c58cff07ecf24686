"""RunConfig's checks of the flat `train.*` values, in-process (the CLI cases are in
tests/test_cli_errors.py and tests/test_cli_bad_input.py), and the one declaration of the
settings (run_config.py): train()'s generated signature against the published names and
defaults, each binding through gin's parser to its RunConfig field, gin's operative config,
unknown names refused, and docs/SETTINGS.md equal to the declaration."""

import dataclasses
import inspect
from pathlib import Path

import gin
import pytest

from keras_largebatch import config
from keras_largebatch.errors import UserInputError
from keras_largebatch.training.loop import train
from keras_largebatch.training.run_config import (
    MAX_EPOCHS,
    SETTINGS,
    OptimizationConfig,
    RunConfig,
    settings_markdown,
    with_setting_parameters,
)


@pytest.mark.parametrize("epochs,expected", [(3, 3), (2.0, 2), (MAX_EPOCHS, MAX_EPOCHS)])
def test_whole_epoch_counts_are_accepted(epochs, expected):
    assert OptimizationConfig(epochs=epochs).epochs == epochs
    assert int(OptimizationConfig(epochs=epochs).epochs) == expected


@pytest.mark.parametrize("epochs,says", [
    (MAX_EPOCHS + 1, "train.epochs=1000001 is more than 1,000,000 epochs"),
    (10**22 + 1, "train.epochs=10000000000000000000001 is more than 1,000,000"),  # not "not an int"
    (0, "train.epochs must be a positive int; got 0"),
    (2.5, "must be a positive int; got 2.5"),
    (float("nan"), "must be a positive int; got nan"),
    (float("inf"), "must be a positive int; got inf"),
    (True, "must be a positive int; got True"),
    ("3", "must be a positive int; got '3'"),
])
def test_bad_epoch_counts_name_the_value(epochs, says):
    with pytest.raises(UserInputError, match=says.replace("(", r"\(")):
        OptimizationConfig(epochs=epochs)


# ---- The declaration: train()'s parameters, gin's names and docs/SETTINGS.md from one table ----

# train()'s settings and defaults as users have bound them (the signature before it was generated
# from run_config.py): the API's independent reference. A new setting need not be listed here.
PUBLISHED_DEFAULTS = {
    "dataset": "fashion_mnist", "model": "cnn_fashion", "model_options": None,
    "optimizer": "momentum", "learning_rate": 0.05, "batch_size": 128, "batch_schedule": None,
    "epochs": 8, "seed": 0, "repeats": 1, "augment": None, "log_gradient_norm": False,
    "adapt_grad_norm_every": None, "max_per_replica_batch": None, "lr_scaling": "none",
    "lr_reference_batch_size": 1, "gradient_noise_scale": None, "jit_compile": False,
    "steps_per_loop": "auto", "validation_examples": None, "inputs_on_device": "auto",
    "precision": "float32", "eval_batch_size": 1000, "eval_train_set": False,
    "log_every_steps": 50, "checkpoints_to_keep": 2, "checkpoint_every_steps": 1000,
    "deterministic": False, "on_divergence": "stop", "loss_upper_bound": None,
    "divergence_lr_factor": 0.5, "max_restores": 3, "extra_actions": (), "verbose": True,
}
# train()'s arguments that are not settings: main passes them; a config cannot bind them.
NOT_SETTINGS = ("run_dir", "overwrite", "config_text", "operative_config", "strategy",
                "components", "signals", "dry_run")


def _adabatch(value):
    from keras_largebatch.schedules import AdaBatch

    return isinstance(value, AdaBatch) and value.batch_size(0.0) == 64


# name: (gin bindings, where RunConfig keeps it, the value it must hold there)
BINDINGS = {
    "dataset": (["train.dataset = 'mnist'"], "data.dataset", "mnist"),
    "augment": (["train.augment = 'cutout'"], "data.augment", "cutout"),
    "repeats": (["train.repeats = 4"], "data.repeats", 4),
    "eval_batch_size": (["train.eval_batch_size = 500"], "data.eval_batch_size", 500),
    "eval_train_set": (["train.eval_train_set = True"], "data.eval_train_set", True),
    "model": (["train.model = 'resnet20'"], "optimization.model", "resnet20"),
    "model_options": (["train.model_options = {'dropout': 0.25}"],
                      "optimization.model_options", {"dropout": 0.25}),
    "optimizer": (["train.optimizer = 'lars'"], "optimization.optimizer", "lars"),
    "learning_rate": (["train.learning_rate = 0.2"], "optimization.learning_rate", 0.2),
    "batch_size": (["train.batch_size = 256"], "optimization.batch_size", 256),
    "batch_schedule": (["train.batch_schedule = @AdaBatch()", "AdaBatch.initial_batch_size = 64",
                        "AdaBatch.interval_epochs = 2"], "optimization.batch_schedule",
                       _adabatch),
    "epochs": (["train.epochs = 3"], "optimization.epochs", 3),
    "lr_scaling": (["train.lr_scaling = 'sqrt'"], "optimization.lr_scaling", "sqrt"),
    "lr_reference_batch_size": (["train.lr_reference_batch_size = 256"],
                                "optimization.lr_reference_batch_size", 256),
    "max_per_replica_batch": (["train.max_per_replica_batch = 64"],
                              "optimization.max_per_replica_batch", 64),
    "adapt_grad_norm_every": (["train.adapt_grad_norm_every = 10"],
                              "optimization.adapt_grad_norm_every", 10),
    "jit_compile": (["train.jit_compile = True"], "optimization.jit_compile", True),
    "precision": (["train.precision = 'mixed_bfloat16'"], "optimization.precision",
                  "mixed_bfloat16"),
    "gradient_noise_scale": (["train.gradient_noise_scale = True"],
                             "optimization.gradient_noise_scale", True),
    "steps_per_loop": (["train.steps_per_loop = 16"], "optimization.steps_per_loop", 16),
    "validation_examples": (["train.validation_examples = 5000"], "data.validation_examples",
                            5000),
    "inputs_on_device": (["train.inputs_on_device = False"], "data.inputs_on_device", False),
    "checkpoint_every_steps": (["train.checkpoint_every_steps = 7"],
                               "checkpointing.every_steps", 7),
    "checkpoints_to_keep": (["train.checkpoints_to_keep = 5"], "checkpointing.keep", 5),
    "on_divergence": (["train.on_divergence = 'restore'"], "checkpointing.on_divergence",
                      "restore"),
    "loss_upper_bound": (["train.loss_upper_bound = 10.0"], "checkpointing.loss_upper_bound",
                         10.0),
    "divergence_lr_factor": (["train.divergence_lr_factor = 0.25"],
                             "checkpointing.divergence_lr_factor", 0.25),
    "max_restores": (["train.max_restores = 1"], "checkpointing.max_restores", 1),
    "log_every_steps": (["train.log_every_steps = 10"], "logging.every_steps", 10),
    "log_gradient_norm": (["train.log_gradient_norm = True"], "logging.gradient_norm", True),
    "verbose": (["train.verbose = False"], "logging.verbose", False),
    "seed": (["train.seed = 42"], "seed", 42),
    "deterministic": (["train.deterministic = True"], "deterministic", True),
    # RunConfig keeps the actions as given, as a tuple (the loop calls them)
    "extra_actions": (["train.extra_actions = ['an action']"], "extra_actions",
                      ("an action",)),
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_gin():
    config.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    yield
    gin.clear_config()


def test_the_published_names_and_defaults_are_train_parameters():
    parameters = inspect.signature(train).parameters
    for name, default in PUBLISHED_DEFAULTS.items():
        assert name in parameters, name
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].default == default, name
        assert type(parameters[name].default) is type(default), name  # 1000, not 1000.0


def test_every_setting_is_a_train_parameter_with_the_dataclass_default():
    """The generated signature against the dataclasses' own defaults (RunConfig() unbound)."""
    parameters = inspect.signature(train).parameters
    defaults = RunConfig()
    assert set(SETTINGS) >= set(PUBLISHED_DEFAULTS)
    assert set(parameters) == set(SETTINGS) | set(NOT_SETTINGS)
    for name, row in SETTINGS.items():
        holder = getattr(defaults, row.group) if row.group else defaults
        assert parameters[name].default == getattr(holder, row.field), name
    # what gin reads (inspect.getfullargspec): keyword-only names, no **kwargs that would let an
    # unknown binding through
    spec = inspect.getfullargspec(train)
    assert spec.varkw is None and spec.args == []
    assert spec.kwonlydefaults == {name: p.default for name, p in parameters.items()
                                   if p.default is not inspect.Parameter.empty}


def test_every_setting_has_a_binding_test_and_a_one_line_doc():
    assert set(BINDINGS) == set(SETTINGS)
    for row in SETTINGS.values():
        assert row.doc and "\n" not in row.doc, row.name


@pytest.mark.parametrize("name", sorted(BINDINGS))
def test_a_binding_reaches_its_field(name, clean_gin):
    """`train.<name> = value` through gin's parser, then grouped as train() groups what gin
    passes it (the gin wrapper's keyword arguments are gin.get_bindings('train'))."""
    bindings, where, expected = BINDINGS[name]
    gin.parse_config(bindings)
    passed = gin.get_bindings("train")
    assert list(passed) == [name]
    value = RunConfig.from_train_args(**passed)
    for part in where.split("."):
        value = getattr(value, part)
    assert expected(value) if callable(expected) else value == expected
    assert RunConfig.from_train_args(**passed) == _with(where, value)  # the rest: defaults


def _with(where: str, value) -> RunConfig:
    """RunConfig() with one field replaced (a hand path through the groups)."""
    base = RunConfig()
    group, _, field = where.rpartition(".")
    if not group:
        return dataclasses.replace(base, **{field: value})
    return dataclasses.replace(base, **{group: dataclasses.replace(getattr(base, group),
                                                                   **{field: value})})


def test_unknown_names_are_refused(clean_gin, tmp_path):
    with pytest.raises(ValueError, match="Configurable 'train' doesn't have a parameter named "
                                         "'epochz'"):
        gin.parse_config(["train.epochz = 3"])
    for name in NOT_SETTINGS:  # main passes these itself
        with pytest.raises(ValueError, match=name):
            gin.parse_config([f"train.{name} = 1"])
    with pytest.raises(TypeError, match="unexpected keyword argument 'epochz'"):
        train(run_dir=str(tmp_path / "run"), epochz=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'run_dir'"):
        RunConfig.from_train_args(run_dir="x")
    assert list(tmp_path.iterdir()) == []


def test_the_operative_config_shows_every_setting(clean_gin, tmp_path):
    """A dry run through the gin-configurable train: gin's operative config lists every
    setting, bound (train.epochs = 1 from tiny.gin) or at its default."""
    configured = config.register_configurables()
    gin.parse_config_files_and_bindings([str(REPO / "gin/tests/tiny.gin")],
                                        ["train.checkpoint_every_steps = 7"])
    summary = configured.train(run_dir=str(tmp_path / "run"), dry_run=True,
                               components=configured.components)
    assert summary["status"] == "dry_run"
    lines = gin.operative_config_str().splitlines()
    expected = {**{name: repr(row.default) for name, row in SETTINGS.items()},
                "epochs": "1", "batch_size": "2000", "checkpoint_every_steps": "7"}
    for name, value in expected.items():
        assert f"train.{name} = {value}" in lines, name
    assert not (tmp_path / "run").exists()


def test_settings_doc_matches_the_declaration():
    assert (REPO / "docs" / "SETTINGS.md").read_text() == settings_markdown(), (
        "regenerate: python -m keras_largebatch.training.run_config > docs/SETTINGS.md")
    text = (REPO / "docs" / "SETTINGS.md").read_text()
    for name, default in PUBLISHED_DEFAULTS.items():
        assert f"| `train.{name}` | `{default!r}` |" in text


def test_the_generator_refuses_a_conflicting_default_or_no_settings():
    def wrong(*, verbose=False, **settings):
        """verbose is a setting declared True."""

    with pytest.raises(TypeError, match="verbose=False.*declared default True"):
        with_setting_parameters(wrong)

    def closed(*, run_dir):
        """no **settings to receive them."""

    with pytest.raises(TypeError, match="must take \\*\\*settings"):
        with_setting_parameters(closed)
