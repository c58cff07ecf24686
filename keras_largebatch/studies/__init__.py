"""Studies: a grid of training runs of the papers' experiments, their summary and figures.

A study is a gin file under gin/studies/ that binds only `sweep.*`: the gin files and bindings
every run shares, named variants (groups of bindings), a grid (the product of binding values)
and the paper's metric. Each run is a real `python -m keras_largebatch.main` process with its own
run folder (results.json, config.gin, TensorBoard, checkpoints) inside the sweep folder.

    python -m keras_largebatch.studies.sweep --gin_file=gin/studies/<study>.gin \\
        [--sweep_dir=runs/<study>] [--parallel=2] [--dry_run] [--noplot] \\
        [--executor=ray [--ray_address=auto|host:port] [--num_cpus=1] [--num_gpus=0]]
    python -m keras_largebatch.studies.plot runs/<run_or_sweep_dir> [--runs='boom_*'] \\
        [--out_dir=runs/<study>/boom] [--notensorboard]
    python -m keras_largebatch.studies.batch_growth runs/<study> [--m0=32]
    python -m keras_largebatch.studies.ba_onset runs/<study> [--m0=32] [--window=1000]

(`python -m keras_largebatch.sweep` and `python -m keras_largebatch.plot` are the old names of
the same commands.)

Modules, each importing only modules listed above it (no cycles; results is a leaf that the
training loop can import too):

    results   the results.json schema: key names, read_results / write_results, number / finite
    manifest  <sweep_dir>/sweep.json: what the sweep ran (read back by the plots)
    metrics   the papers' metrics of one run (METRICS, run_metrics)
    seeds     seeds as a grid axis: run names, mean +- std over seeds (sweep.seeds)
    grid      a study file -> its runs (Study, RunSpec, load_study)
    summary   <sweep_dir>/summary.csv and summary.md
    figures   the figures from plain arrays (matplotlib only)
    run_data  one run folder read for the figures (Run)
    plot      the figures of a run or sweep folder, and its command line
    batch_growth  a batch-adaptive sweep's boom statistics per grid point, and its command line
    ba_onset  BA growth against Eq. 7's noise term eta sigma / sqrt(m), per update, and its CLI
    executors the runs' execution: local subprocesses or Ray core tasks (the same CLI process)
    hparams   TensorBoard HParams summaries of a study's runs (written by the sweep)
    sweep     the runner and its command line (regenerates the plots at the end)
"""
