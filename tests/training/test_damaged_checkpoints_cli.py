"""Damaged checkpoints through the real CLI: a rerun resumes from the newest checkpoint that reads
back (one `warning:` line per checkpoint skipped), never deletes an intact checkpoint because a
newer one is broken, and never starts again from update 0 over checkpoints: when none reads
back it is refused (exit 2, one `error:` line, the run dir byte-identical).

One killed run (ckpt-4 and ckpt-8 on disk) is copied once per case and damaged as a user did;
each resumed case must end with the weights of an uninterrupted run (train.deterministic).
The killed runs are real processes (SIGKILL); the reference, the reruns that resume and the
refused one run in-process (tests/inprocess.py) meanwhile.
"""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..cli import TINY, error_lines, run_cli, tree_state
from ..inprocess import run_main

pytestmark = pytest.mark.slow  # 2 CLI processes, 7 in-process runs

B = "--gin_bindings="
CONFIG = [*TINY, B + "fashion_mnist.max_train_examples = 6000",
          B + "fashion_mnist.max_test_examples = 1000", B + "train.batch_size = 500",
          B + "train.checkpoint_every_steps = 4", B + "train.deterministic = True"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage(ckpt: Path, name: str) -> None:
    if name.startswith("newest_index_deleted"):
        (ckpt / "ckpt-8.index").unlink()
    elif name == "state_file_deleted":
        (ckpt / "checkpoint").unlink()
    elif name == "state_file_garbled":
        (ckpt / "checkpoint").write_bytes(b"\x00\xffmodel_checkpoint_path: {{{ garbage\n")
    elif name == "state_file_names_missing":
        (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckpt-99"\n'
                                         'all_model_checkpoint_paths: "ckpt-99"\n')
    elif name == "newest_data_truncated":
        _truncate(ckpt / "ckpt-8.data-00000-of-00001")
    elif name == "all_truncated":
        _truncate(ckpt / "ckpt-8.data-00000-of-00001")
        _truncate(ckpt / "ckpt-4.data-00000-of-00001")
    else:
        raise AssertionError(name)


# name: (faults of the rerun, checkpoint resumed from, text of the warning line)
RESUMED = {
    "newest_index_deleted": ([], "ckpt-4", "skipping damaged checkpoint"),
    "state_file_deleted": ([], "ckpt-8", "checkpoint is missing"),
    "state_file_garbled": ([], "ckpt-8", "checkpoint is unreadable"),
    "state_file_names_missing": ([], "ckpt-8", "names ckpt-99, which does not exist"),
    "newest_data_truncated": ([], "ckpt-4", "skipping damaged checkpoint"),
    # Killed at update 10, after the resumed run saved ckpt-8 again: ckpt-4 must still be there.
    "newest_index_deleted_then_killed": (["kill_at_step=10"], "ckpt-4",
                                         "skipping damaged checkpoint"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damaged")
    with ThreadPoolExecutor(max_workers=1) as pool:
        killed = pool.submit(run_cli, *CONFIG, f"--run_dir={tmp / 'base'}",
                             faults=["kill_at_step=10"])
        procs = {"ref": run_main(*CONFIG, f"--run_dir={tmp / 'ref'}")}  # meanwhile
        base = killed.result()
        assert base.returncode == -9, base.stderr[-2000:]
        assert sorted(p.name for p in (tmp / "base" / "checkpoints").glob("*.index")) == [
            "ckpt-4.index", "ckpt-8.index"]
        for name in [*RESUMED, "all_truncated"]:
            shutil.copytree(tmp / "base", tmp / name, symlinks=True)
            _damage(tmp / name / "checkpoints", name)
        before = tree_state(tmp / "all_truncated")

        def rerun(name, run):
            faults = RESUMED[name][0] if name in RESUMED else []
            return run(*CONFIG, f"--run_dir={tmp / name}", faults=faults)

        in_process = [n for n in [*RESUMED, "all_truncated"] if not RESUMED.get(n, ([],))[0]]
        futures = {name: pool.submit(rerun, name, run_cli)
                   for name in RESUMED if name not in in_process}  # killed: real processes
        procs.update({name: rerun(name, run_main) for name in in_process})
        procs.update({name: f.result() for name, f in futures.items()})
    return tmp, procs, before


def _weights(proc) -> str:
    return [line for line in proc.stdout.splitlines() if line.startswith("Final weights")][-1]


@pytest.mark.parametrize("name", sorted(RESUMED))
def test_damaged_newest_checkpoint_resumes_from_an_intact_one(outcomes, name):
    tmp, procs, _ = outcomes
    proc, ref = procs[name], procs["ref"]
    faults, resumed_from, warning = RESUMED[name]
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not error_lines(proc), proc.stderr[-2000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warning in warnings[0], proc.stderr[-2000:]
    assert f"from {tmp / name / 'checkpoints' / resumed_from}\n" in proc.stdout, proc.stdout
    ckpt = tmp / name / "checkpoints"
    if faults:  # killed at 10: ckpt-4 (restored) and the rewritten ckpt-8 both read back
        assert proc.returncode == -9, proc.stderr[-2000:]
        from keras_largebatch.training import checkpoint_files as cf

        assert cf.numbers(str(ckpt)) == [8, 4]
        assert [cf.damage(str(ckpt / f"ckpt-{n}")) for n in (8, 4)] == [None, None]
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _weights(proc) == _weights(ref)  # resumed, not restarted, and exactly
    assert json.loads((tmp / name / "results.json").read_text())["status"] == "completed"


def test_no_intact_checkpoint_is_refused_and_untouched(outcomes):
    tmp, procs, before = outcomes
    proc = procs["all_truncated"]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "ckpt-8 cannot be restored into this run" in lines[0], lines[0]
    assert f"move {tmp / 'all_truncated' / 'checkpoints'} away" in lines[0]
    assert "--overwrite" in lines[0]
    assert tree_state(tmp / "all_truncated") == before
