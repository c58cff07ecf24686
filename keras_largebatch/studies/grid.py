"""Parsing a study file into its runs: `sweep.*` gin bindings -> a `Study` of `RunSpec`s.

    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin --dry_run

prints the runs this module expands a study into (the study file format is in
keras_largebatch/studies/sweep.py). `load_study` parses only `sweep.*` bindings, so the sweep
process never parses (or imports) the runs' `train.*` configurables; `sweep` (the gin
configurable) checks the study and expands variants x the product of the grid's values.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import sys
from collections.abc import Mapping, Sequence

from keras_largebatch import configs, validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.gin_policy import ALLOW_FLAG, restricted
from keras_largebatch.studies.manifest import SWEEP_FILE, is_folder_name
from keras_largebatch.studies.metrics import METRICS
from keras_largebatch.studies.seeds import SEED_KEY, check_seeds, run_name

REPO_DIR = configs.root()  # the folder holding gin/: the checkout, or the installed package
LOCK_FILE = ".sweep.lock"
LOGS_DIR = "logs"
# Files and folders of <sweep_dir> itself, which no run folder may be named.
RESERVED_NAMES = (SWEEP_FILE, LOGS_DIR, "summary.csv", "summary.md", "summary_runs.csv",
                  "tensorboard")
_BINDING_NAME = re.compile(r"^[A-Za-z_][\w./]*$")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study: its folder name, the grid values that name it, and its CLI flags.

    `seed` is set when the study has `sweep.seeds` (studies/seeds.py); `params` never holds it.
    """

    name: str
    variant: str | None
    params: dict
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...]
    seed: int | None = None

    def command(self, run_dir: str, python: str = sys.executable, *,
                allow_imports: bool = False) -> list[str]:
        return [python, "-m", "keras_largebatch.main",
                *(f"--gin_file={f}" for f in self.gin_files),
                *(f"--gin_bindings={b}" for b in self.bindings),
                f"--run_dir={run_dir}", *([ALLOW_FLAG] if allow_imports else [])]


@dataclasses.dataclass(frozen=True)
class Study:
    runs: tuple[RunSpec, ...]
    grid_keys: tuple[str, ...]
    metric: str
    description: str = ""
    loss_upper_bound: float | None = None
    base_lr_key: str | None = None
    seeds: tuple[int, ...] = ()          # sweep.seeds; () = one run per grid point


def gin_literal(value) -> str:
    """A grid value as gin text: repr(), except '@ref()' / '%MACRO' strings stay verbatim."""
    if isinstance(value, str) and value[:1] in "@%":
        return value
    return repr(value)


def name_part(value) -> str:
    if isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, (list, tuple)):
        text = "x".join(name_part(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def _binding_key(binding: str) -> str:
    return binding.split("=", 1)[0].strip()


def _resolve_gin_file(path: str) -> str:
    for base in (os.getcwd(), REPO_DIR):
        candidate = os.path.join(base, path)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise UserInputError(f"sweep.base_gin_files names {path!r}, which does not exist (relative "
                         f"paths are tried from the current folder and {REPO_DIR})")


def sweep(
    *,
    base_gin_files: Sequence[str] = (),
    base_bindings: Sequence[str] = (),
    grid: Mapping[str, Sequence] | None = None,
    variants: Mapping[str, Sequence[str]] | None = None,
    metric: str = "best_test_accuracy",
    description: str = "",
    loss_upper_bound: float | None = None,
    base_lr_key: str | None = None,
    seeds: Sequence[int] | None = None,
) -> Study:
    """Expand a study into its runs: variants x the product of the grid's values (x seeds).

    `seeds` (e.g. [0, 1, 2]) repeats every run once per seed, binding `train.seed` and naming
    it `<run>__seed=<n>`; the summary and plots then aggregate over seeds (studies/seeds.py).

    `loss_upper_bound` additionally marks a run diverged at the first epoch whose training loss
    exceeds it (the runs' own `train.*` divergence handling stops them; this only classifies).
    `base_lr_key` names the binding that holds the run's LR for the seed-001 plot (default
    `train.learning_rate`); the plot converts it to eta/m with the run's scaling rule.
    """
    for name, value, example in (("grid", grid, "{'train.batch_size': [32, 64]}"),
                                 ("variants", variants, "{'name': ['train.epochs = 3']}")):
        if value is not None and not isinstance(value, Mapping):
            raise UserInputError(f"sweep.{name} must be a dict like {example}; got {value!r}")
    for name, value in (("base_gin_files", base_gin_files), ("base_bindings", base_bindings)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise UserInputError(f"sweep.{name} must be a list of strings (in [...]); got "
                                 f"{value!r}")
    grid = dict(grid or {})
    variants = dict(variants or {})
    if metric not in METRICS:
        raise UserInputError(f"sweep.metric = {metric!r} is not one of {', '.join(METRICS)}")
    if not grid and not variants:
        raise UserInputError("the study defines no runs; set sweep.grid and/or sweep.variants")
    for key, values in grid.items():
        if not isinstance(key, str) or not _BINDING_NAME.match(key):
            raise UserInputError(f"sweep.grid key {key!r} is not a binding name like "
                                 "'train.batch_size'")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise UserInputError(f"sweep.grid[{key!r}] must be a non-empty list of values; "
                                 f"got {values!r}")
    for vname, bindings in variants.items():
        if not isinstance(vname, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", vname):
            raise UserInputError(f"sweep.variants name {vname!r} must use only letters, digits "
                                 "and _ . + -")
        if vname.startswith("."):  # '..' would put the run outside the sweep folder
            raise UserInputError(f"sweep.variants name {vname!r} starts with '.'; name the "
                                 "variant with a letter or digit first")
        if isinstance(bindings, str) or not all(isinstance(b, str) and "=" in b
                                                for b in bindings):
            raise UserInputError(f"sweep.variants[{vname!r}] must be a list of binding strings "
                                 f"like 'train.batch_size = 128'; got {bindings!r}")
        clash = {_binding_key(b) for b in bindings} & set(grid)
        if clash:
            raise UserInputError(f"sweep.variants[{vname!r}] binds {sorted(clash)[0]!r}, which "
                                 "sweep.grid also varies; bind it in one place only")
    if loss_upper_bound is not None:
        loss_upper_bound = validate.positive("sweep.loss_upper_bound", loss_upper_bound)
    for b in base_bindings:
        if not isinstance(b, str) or "=" not in b:
            raise UserInputError(f"sweep.base_bindings entry {b!r} is not a binding string like "
                                 "'train.epochs = 3'")
    if seeds is not None:
        try:
            seeds = check_seeds(seeds)
        except ValueError as e:
            raise UserInputError(str(e)) from None
        bound = [b for b in [*base_bindings, *(b for v in variants.values() for b in v)]
                 if _binding_key(b) == SEED_KEY] + [k for k in grid if k == SEED_KEY]
        if bound:
            raise UserInputError(f"sweep.seeds sets {SEED_KEY}, which the study also binds "
                                 f"({bound[0]!r}); bind it in one place only")
    gin_files = tuple(_resolve_gin_file(f) for f in base_gin_files)

    shorts = [k.rsplit(".", 1)[-1] for k in grid]
    labels = [s if shorts.count(s) == 1 else k for s, k in zip(shorts, grid)]
    runs = []
    for vname, vbindings in (variants.items() or [(None, [])]):
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            parts = ([vname] if vname else []) + [
                f"{label}={name_part(v)}" for label, v in zip(labels, values)]
            runs.append(RunSpec(
                name="__".join(parts), variant=vname, params=params, gin_files=gin_files,
                bindings=(*base_bindings, *vbindings,
                          *(f"{k} = {gin_literal(v)}" for k, v in params.items()))))
    if seeds:  # seeds outermost: the first seed's runs make a whole study first
        runs = [dataclasses.replace(r, name=run_name(r.name, s), seed=s,
                                    bindings=(*r.bindings, f"{SEED_KEY} = {s}"))
                for s in seeds for r in runs]
    names = [r.name for r in runs]
    for name in names:  # a run writes only inside <sweep_dir>/<name>
        if not is_folder_name(name) or name.startswith(".") or name in RESERVED_NAMES:
            raise UserInputError(f"a run of the study would be named {name!r}, which is not a "
                                 "run folder of the sweep; rename the variant or add a grid")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserInputError(f"two runs of the study are both named {duplicate!r}; make the grid "
                             "values distinct")
    return Study(runs=tuple(runs), grid_keys=tuple(grid), metric=metric,
                 description=description, loss_upper_bound=loss_upper_bound,
                 base_lr_key=base_lr_key, seeds=tuple(seeds or ()))


def load_study(gin_files: Sequence[str], bindings: Sequence[str] = (), *,
               allow_imports: bool = False) -> Study:
    """Parse study gin files (only `sweep.*` bindings) and expand them.

    `import` statements are refused unless `allow_imports` (keras_largebatch/gin_policy.py)."""
    import gin

    gin.clear_config()
    configurable = gin.external_configurable(sweep, name="sweep", module="keras_largebatch")
    for path in (os.getcwd(), REPO_DIR):
        gin.add_config_file_search_path(path)
    try:
        with restricted(allow_imports=allow_imports), configs.quiet_lookups():
            gin.parse_config_files_and_bindings(list(gin_files), list(bindings))
    except UserInputError:
        raise
    except Exception as e:  # gin raises many types for bad text
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserInputError(
            f"bad study config: {first} (a study file binds only sweep.*; the runs' bindings "
            "go in sweep.base_bindings or a file named in sweep.base_gin_files)") from None
    try:
        # Checked explicitly: whether gin knows `train` depends on what this process imported.
        for line in gin.config_str().splitlines():
            match = re.match(r"^([A-Za-z_][\w./]*)\.\w+ = ", line)
            if match and match.group(1).split("/")[-1] not in ("sweep", "keras_largebatch.sweep"):
                raise UserInputError(
                    f"bad study config: {line.split(' = ')[0]!r} is bound in the study (a study "
                    "file binds only sweep.*; the runs' bindings go in sweep.base_bindings or a "
                    "file named in sweep.base_gin_files)")
        return configurable()
    finally:
        gin.clear_config(clear_constants=True)


