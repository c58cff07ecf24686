"""A run's settings, declared once: typed, validated groups whose fields are `train()`'s flat names.

    config = RunConfig.from_train_args(epochs=8, checkpoint_every_steps=500)   # what train() does
    config.optimization.epochs, config.checkpointing.every_steps, ...
    SETTINGS["checkpoint_every_steps"]   # Setting(name, group, field, default, doc, annotation)

Each field below is one run setting: its default, a one-line doc and (where the flat name is not
the field's own) the name users bind, `train.<name>` (`train.checkpoint_every_steps` is
`CheckpointConfig.every_steps`). Everything else is derived from these fields: the table
`SETTINGS`, `train()`'s keyword parameters and their defaults (`with_setting_parameters`, so gin
reads a real signature: binding names, defaults, the operative config), `from_train_args`, and
docs/SETTINGS.md (`python -m keras_largebatch.training.run_config > docs/SETTINGS.md`; a test
keeps it equal). Adding a setting is one field here. Every value is checked in `__post_init__`
before anything is built or written (one `error:` line naming the binding and the fix); a few
checks that need the data or the model run later (training/build.py). Units: epochs are epochs,
batch sizes are global samples per update (all replicas), `*_steps` are updates.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import keras

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules.batch import BatchSchedule
from keras_largebatch.schedules.scaling import RULES as LR_SCALING_RULES
from keras_largebatch.training.loop_length import AUTO
from keras_largebatch.training.precision import PRECISIONS

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule
# The most epochs a run may ask for: the batch schedule's phases are found epoch by epoch
# (schedules/batch.py), so an astronomically large `train.epochs` (a typo, 10**22) would hang
# before the first update instead of failing; a million is far beyond any real schedule.
MAX_EPOCHS = 1_000_000


def setting(default, doc: str, *, name: str | None = None) -> Any:
    """A dataclass field that is a run setting: `default`, a one-line `doc`, and the flat
    binding name `train.<name>` where it differs from the field's own name."""
    if not doc or "\n" in doc:
        raise ValueError(f"a setting's doc is one line: {doc!r}")
    return dataclasses.field(default=default, metadata={"doc": doc, "name": name})


def _positive_int(name: str, value) -> int:
    """`value` as an int if it is a whole number > 0 (validate.is_whole: 2.0 is fine)."""
    if not validate.is_whole(value) or value <= 0:
        raise UserInputError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _optional_whole(name: str, value, minimum: int) -> int | None:
    if value is None:
        return None
    if not validate.is_int(value) or value < minimum:
        raise UserInputError(f"{name} must be an integer >= {minimum} or None; got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What is read and how: dataset, augmentation, seed-003 repeats, evaluation batches."""

    dataset: Any = setting("fashion_mnist", "a registered data source (fashion_mnist, mnist, "
                           "cifar10, cifar100, imagenet2012; options bind by its name: "
                           "fashion_mnist.data_dir) or a DataSource")
    augment: str | Callable | None = setting(None, "augmentation policy 'standard', 'cutout' or "
                                             "'inception' (data/augment.py), a callable "
                                             "f(images, seed), or None")
    repeats: int = setting(1, "M augmented copies of every sample per update (batch "
                           "augmentation, seed 003)")
    eval_batch_size: int = setting(1000, "samples per evaluation batch")
    eval_train_set: bool = setting(False, "also evaluate the loss on the whole training set "
                                   "every epoch (seed 002's training-loss curves)")
    validation_examples: int | None = setting(None, "hold the last N training examples out "
                                              "as a validation split, evaluated every epoch "
                                              "(data/validation.py); None: none")
    inputs_on_device: bool | str = setting("auto", "hold an in-memory training set, normalised, "
                                           "on each replica's device and gather batches in "
                                           "the step (data/device_data.py); 'auto': where it "
                                           "applies and fits 1 GiB per replica")

    def __post_init__(self):
        if self.inputs_on_device != "auto" and not isinstance(self.inputs_on_device, bool):
            raise UserInputError(f"train.inputs_on_device must be True, False or 'auto'; got "
                                 f"{self.inputs_on_device!r}")
        if not validate.is_int(self.repeats) or self.repeats < 1:
            raise UserInputError(f"train.repeats must be an integer >= 1; got {self.repeats!r}")
        _positive_int("train.eval_batch_size", self.eval_batch_size)
        if not (self.augment is None or isinstance(self.augment, str) or callable(self.augment)):
            raise UserInputError(f"train.augment must be a policy name ('standard', 'cutout', "
                                 f"'inception'), a callable or None; got {self.augment!r}")
        validate.boolean("train.eval_train_set", self.eval_train_set)
        _optional_whole("train.validation_examples", self.validation_examples, 1)


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """The model, the optimizer and the schedules of batch size and learning rate."""

    model: str = setting("cnn_fashion", "a registered model name (models/registry.py; "
                         "options bind by its name: cnn_fashion.dropout)")
    model_options: dict | None = setting(None, "extra keyword arguments of the model builder "
                                         "(a dict), or None")
    optimizer: str = setting("momentum", "'sgd', 'momentum', 'adam', 'lars', 'ba_momentum' or "
                             "'ba_sgd' (options: SGD.*, Adam.*, LARS.*, BAMomentum.*)")
    learning_rate: LearningRate = setting(0.05, "LR per update: a positive float or an "
                                          "epoch-keyed schedule (@LinearWarmup(), ...)")
    batch_size: int = setting(128, "global samples per update (all replicas); "
                              "train.batch_schedule replaces it by phase")
    batch_schedule: Any = setting(None, "a batch-size schedule (@AdaBatch(), "
                                  "@PiecewiseBatch(), @GoodputBatch(), ...) whose LR "
                                  "multiplier applies to train.learning_rate, or None")
    epochs: int = setting(8, f"passes over the training set (at most {MAX_EPOCHS:,})")
    lr_scaling: str = setting("none", "'linear' or 'sqrt': scale the LR with the phase's batch "
                              "over train.lr_reference_batch_size; 'adascale': by AdaScale's "
                              "gain (goodput/adascale.py); 'none'")
    lr_reference_batch_size: int = setting(1, "the batch size train.learning_rate is given for "
                                           "(lr_scaling 'linear' or 'sqrt')")
    max_per_replica_batch: int | None = setting(None, "above this per-replica batch, an update "
                                                "accumulates the gradients of equal "
                                                "micro-batches; None: never")
    adapt_grad_norm_every: int | None = setting(None, "rescale the loss every N updates as the "
                                                "seed-003 authors' code does; None: off")
    jit_compile: bool = setting(False, "compile each replica's forward and backward pass with "
                                "XLA")
    precision: str = setting("float32", "Keras dtype policy of the run: 'float32', "
                             "'mixed_bfloat16' or 'mixed_float16' (training/precision.py)")
    gradient_noise_scale: bool | None = setting(None, "measure |G|^2, tr(Sigma) and B_simple "
                                                "(goodput/noise_scale.py); None: where "
                                                "AdaScale or GoodputBatch needs it")
    steps_per_loop: int | str = setting("auto", "updates per compiled call "
                                        "(steps/many_updates.py), or 'auto': calls of ~0.1 s "
                                        "(training/loop_length.py); actions, signals and "
                                        "checkpoints act between calls")

    def __post_init__(self):
        if _positive_int("train.epochs", self.epochs) > MAX_EPOCHS:
            raise UserInputError(f"train.epochs={self.epochs!r} is more than {MAX_EPOCHS:,} "
                                 f"epochs; give the number of passes over the training set")
        _positive_int("train.batch_size", self.batch_size)
        if not isinstance(self.learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            if not validate.is_real(self.learning_rate) or not self.learning_rate > 0 or (
                    self.learning_rate == float("inf")):
                raise UserInputError(f"train.learning_rate must be a positive float; got "
                                     f"{self.learning_rate!r}")
        if self.model_options is not None and not isinstance(self.model_options, dict):
            raise UserInputError(f"train.model_options must be a dict or None; got "
                                 f"{self.model_options!r}")
        if self.batch_schedule is not None and not isinstance(self.batch_schedule,
                                                              BatchSchedule):
            raise UserInputError(f"train.batch_schedule must be a batch schedule such as "
                                 f"@AdaBatch() or None; got {self.batch_schedule!r}")
        validate.one_of("train.lr_scaling", self.lr_scaling, (*LR_SCALING_RULES, "adascale"))
        if self.gradient_noise_scale is not None:
            validate.boolean("train.gradient_noise_scale", self.gradient_noise_scale)
        if self.gradient_noise_scale is False and self.measures_noise_scale:
            raise UserInputError("train.gradient_noise_scale = False, but train.lr_scaling = "
                                 "'adascale' and GoodputBatch need it; drop the binding")
        _positive_int("train.lr_reference_batch_size", self.lr_reference_batch_size)
        _optional_whole("train.max_per_replica_batch", self.max_per_replica_batch, 1)
        _optional_whole("train.adapt_grad_norm_every", self.adapt_grad_norm_every, 1)
        validate.boolean("train.jit_compile", self.jit_compile)
        validate.one_of("train.precision", self.precision, PRECISIONS)
        if self.steps_per_loop != AUTO and (not validate.is_int(self.steps_per_loop)
                                            or self.steps_per_loop < 1):
            raise UserInputError(f"train.steps_per_loop must be an integer >= 1 (updates per "
                                 f"compiled call) or '{AUTO}'; got {self.steps_per_loop!r}")
        if self.steps_per_loop != AUTO and self.steps_per_loop > 1 and (
                self.adapt_grad_norm_every):
            raise UserInputError(f"train.steps_per_loop = {self.steps_per_loop} cannot be "
                                 f"combined with train.adapt_grad_norm_every (its rescaling "
                                 f"step is chosen on the host each update); drop one")

    @property
    def measures_noise_scale(self) -> bool:
        """Whether the run needs the gradient noise scale (AdaScale, a goodput schedule)."""
        return self.lr_scaling == "adascale" or getattr(self.batch_schedule, "adaptive", False)

    @property
    def noise_scale(self) -> bool:
        """train.gradient_noise_scale, with None resolved (on where needed)."""
        if self.gradient_noise_scale is None:
            return self.measures_noise_scale
        return self.gradient_noise_scale


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to checkpoint and what to do when training diverges (training/divergence.py)."""

    every_steps: int | None = setting(1000, "updates between checkpoints (and one every epoch); "
                                      "0 or None: at epoch ends only",
                                      name="checkpoint_every_steps")
    keep: int = setting(2, "checkpoints kept on disk", name="checkpoints_to_keep")
    on_divergence: str = setting("stop", "on a non-finite loss (or one above "
                                 "train.loss_upper_bound): 'stop', or 'restore' the last "
                                 "checkpoint with a lower LR")
    loss_upper_bound: float | None = setting(None, "a loss above this diverges too; None: only "
                                             "a non-finite loss")
    divergence_lr_factor: float = setting(0.5, "the LR multiplier after each 'restore'")
    max_restores: int = setting(3, "'restore's before the run stops as diverged")

    def __post_init__(self):
        if self.every_steps is not None and (not validate.is_int(self.every_steps)
                                             or self.every_steps < 0):
            raise UserInputError(f"train.checkpoint_every_steps must be an integer >= 0 (0 or "
                                 f"None: only at epoch ends); got {self.every_steps!r}")
        if not validate.is_int(self.keep) or self.keep < 1:
            raise UserInputError(f"train.checkpoints_to_keep must be an integer >= 1; got "
                                 f"{self.keep!r}")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """What the run prints and writes to TensorBoard besides the per-epoch scalars."""

    every_steps: int = setting(50, "updates between the step/* TensorBoard scalars and the "
                               "divergence checks", name="log_every_steps")
    gradient_norm: bool = setting(False, "record the global gradient's L2 norm per epoch "
                                  "(train/gradient_norm)", name="log_gradient_norm")
    verbose: bool = setting(True, "print the run's progress lines")

    def __post_init__(self):
        if not validate.is_int(self.every_steps) or self.every_steps < 1:
            raise UserInputError(f"train.log_every_steps must be an integer >= 1; got "
                                 f"{self.every_steps!r}")
        validate.boolean("train.log_gradient_norm", self.gradient_norm)
        validate.boolean("verbose", self.verbose)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole run: one group per concern, plus the settings that concern all of them."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimization: OptimizationConfig = dataclasses.field(default_factory=OptimizationConfig)
    checkpointing: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    seed: int = setting(0, "seeds data order, initialisation, augmentation and dropout; an "
                        "integer in [0, 2**32)")
    deterministic: bool = setting(False, "TF op determinism: bitwise-reproducible runs and "
                                  "resumes on CPU")
    extra_actions: Sequence = setting((), "user actions run after every update "
                                      "(training/actions/)")

    def __post_init__(self):
        if not validate.is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise UserInputError(f"train.seed must be an integer in [0, 2**32); got "
                                 f"{self.seed!r}")
        validate.boolean("train.deterministic", self.deterministic)
        object.__setattr__(self, "extra_actions", tuple(self.extra_actions or ()))

    @classmethod
    def from_train_args(cls, **kwargs) -> RunConfig:
        """Group `train()`'s flat keyword arguments (the gin binding names, `SETTINGS`); a
        setting not given keeps its declared default."""
        for name in kwargs:
            if name not in SETTINGS:
                raise TypeError(f"train() got an unexpected keyword argument {name!r}")
        grouped: dict[str | None, dict] = {}
        for name, value in kwargs.items():
            s = SETTINGS[name]
            grouped.setdefault(s.group, {})[s.field] = value
        groups = {group: kind(**grouped.get(group, {})) for group, kind in _groups(cls).items()}
        return cls(**groups, **grouped.get(None, {}))


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the table: `train.<name>` is `RunConfig.<group>.<field>` (group None: a
    field of RunConfig itself)."""

    name: str
    group: str | None
    field: str
    default: Any
    doc: str
    annotation: str


def _groups(cls=None) -> dict[str, type]:
    """RunConfig's group fields and their dataclasses, in declaration order."""
    hints = typing.get_type_hints(cls or RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls or RunConfig)
            if dataclasses.is_dataclass(hints[f.name])}


def _collect() -> dict[str, Setting]:
    rows: dict[str, Setting] = {}
    for group, kind in [*_groups().items(), (None, RunConfig)]:
        for f in dataclasses.fields(kind):
            if "doc" not in f.metadata:
                continue  # a group
            name = f.metadata["name"] or f.name
            if name in rows:
                raise TypeError(f"two settings bind as train.{name}: give one a name=")
            rows[name] = Setting(name, group, f.name, f.default, f.metadata["doc"], str(f.type))
    return rows


SETTINGS: dict[str, Setting] = _collect()


def with_setting_parameters(fn: Callable) -> Callable:
    """`fn(*, <its own arguments>, **settings)`, given the signature that lists every setting
    as a keyword-only parameter with its declared default, so that gin (which reads signatures:
    `inspect.getfullargspec` honours `__signature__`) binds `train.<name>`, shows the defaults in
    the operative config and refuses unknown names. An argument `fn` declares itself that is a
    setting too (`verbose`, `extra_actions`) must have the declared default."""
    signature = inspect.signature(fn)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    if len(own) == len(signature.parameters):
        raise TypeError(f"{fn.__name__} must take **settings")
    for p in own:
        if p.name in SETTINGS and p.default != SETTINGS[p.name].default:
            raise TypeError(f"{fn.__name__}({p.name}={p.default!r}) differs from its declared "
                            f"default {SETTINGS[p.name].default!r}")
    names = {p.name for p in own}
    generated = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default,
                                   annotation=s.annotation)
                 for s in SETTINGS.values() if s.name not in names]
    fn.__signature__ = signature.replace(parameters=[*own[:1], *generated, *own[1:]])
    return fn


def settings_markdown() -> str:
    """docs/SETTINGS.md: the table of every setting, generated from the declaration."""
    lines = ["# Run settings", "",
             "Every `train.*` binding, its default and what it does. Generated from the "
             "declaration in `keras_largebatch/training/run_config.py` (one field per setting); "
             "regenerate with", "",
             "    python -m keras_largebatch.training.run_config > docs/SETTINGS.md", "",
             "(tests/training/test_run_config.py fails when this file and the declaration "
             "differ).", "",
             "| binding | default | in RunConfig | what it does |",
             "|---|---|---|---|"]
    for s in SETTINGS.values():
        where = f"{s.group}.{s.field}" if s.group else s.field
        doc = s.doc.replace("|", "\\|")  # a pipe would end the table cell
        lines.append(f"| `train.{s.name}` | `{s.default!r}` | `{where}` | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
