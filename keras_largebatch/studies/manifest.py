"""<sweep_dir>/sweep.json: what `python -m keras_largebatch.studies.sweep` ran, read back by
`python -m keras_largebatch.studies.plot`.

    {"title": ..., "metric": ..., "description": ..., "grid_keys": [...], "base_lr_key": ...,
     "loss_upper_bound": ..., "seeds": [0, 1, 2] (only with sweep.seeds),
     "order": [run names in study order],
     "runs": {run name: {"command": [...], "status": ..., "error": ..., "returncode": ...}}}

The sweep rewrites it atomically after every run, so a file that does not parse, or whose fields
have the wrong type, was edited by hand: `read_manifest` refuses it with a one-line
`UserInputError` (deleting the file is safe: the sweep rebuilds it, and finished runs are known
by their results.json).
"""

from __future__ import annotations

import json
import os

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError

SWEEP_FILE = "sweep.json"


def is_folder_name(name: str) -> bool:
    """Whether `name` is one plain folder name: inside the folder it is joined to, always."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..")
            and "/" not in name and os.sep not in name and "\0" not in name)


def read_manifest(sweep_dir: str) -> dict:
    """sweep.json of `sweep_dir` as a dict ({} when there is none yet); see the docstring."""
    path = os.path.join(sweep_dir, SWEEP_FILE)
    fix = "fix it or delete it (the sweep rebuilds it; finished runs are kept)"
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserInputError(f"{path} is damaged ({first}); {fix}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} holds {type(data).__name__}, not an object; {fix}")
    runs = data.get("runs")
    if runs is not None and not (isinstance(runs, dict)
                                 and all(isinstance(v, dict) for v in runs.values())):
        raise UserInputError(f"{path}: 'runs' is not an object of per-run objects; {fix}")
    order = data.get("order")
    if order is not None and not (isinstance(order, list)
                                  and all(isinstance(n, str) for n in order)):
        raise UserInputError(f"{path}: 'order' is not a list of run names; {fix}")
    outside = next((n for n in [*(order or []), *(runs or {})] if not is_folder_name(n)), None)
    if outside is not None:
        raise UserInputError(f"{path} names a run {outside!r}, which is not a folder of the "
                             f"sweep; {fix}")
    for key in ("title", "metric", "description", "base_lr_key"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UserInputError(f"{path}: {key!r}={data[key]!r} is not a string; {fix}")
    seeds = data.get("seeds")
    if seeds is not None and not (isinstance(seeds, list) and all(
            validate.is_int(x) for x in seeds)):
        raise UserInputError(f"{path}: 'seeds'={seeds!r} is not a list of integers; {fix}")
    bound = data.get("loss_upper_bound")
    if bound is not None and not validate.is_real(bound):
        raise UserInputError(f"{path}: 'loss_upper_bound'={bound!r} is not a number; {fix}")
    return data
