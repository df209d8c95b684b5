"""Run every fold of every store, each in a fresh process, then reduce.

The local equivalent of the SLURM array: each fold is exactly one
``hpcsnp train STORE --fold i`` call in a child process (so memory cannot
creep from fold to fold), followed by ``hpcsnp baseline STORE --fold i``
when the baseline is on, with their logs in ``RUN/logs/``.  Several folds run
at once (``jobs``), sharing the granted cores between them: small
convolutions use one core far better than two, so on a few cores
fold-parallelism beats thread-parallelism.  Finished folds are skipped; a
failed fold does not stop the others, and the reduce runs only when all
folds are finished.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from hpcsnp.errors import FoldFailedError
from hpcsnp.store import open_store
from hpcsnp.train import fold_dir, is_complete

FOLD_PROCESS_GB = 1.2  # peak RSS of one fold process on SoyNAM-sized data, with headroom


def plan_jobs(cores: int, n_folds: int, jobs: int | None = None, mem_available_gb: float | None = None):
    """(folds at a time, threads per fold).  Default: one fold per core, as many as there
    are folds and as fit in available memory; the cores are split evenly between them.
    >>> plan_jobs(2, 20), plan_jobs(32, 10), plan_jobs(8, 20, mem_available_gb=4.0), plan_jobs(4, 20, jobs=1)
    ((2, 1), (10, 3), (3, 2), (1, 4))
    """
    if jobs is None:
        jobs = min(cores, max(n_folds, 1))
        if mem_available_gb is not None:
            jobs = min(jobs, max(1, int(mem_available_gb // FOLD_PROCESS_GB)))
    jobs = max(1, min(jobs, cores))
    return jobs, max(1, cores // jobs)


def _mem_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_cv(stores, run_dir, *, config_path: Path, threads=None, jobs=None, force=False, verbose=False,
           progress=True, baseline=False) -> list[dict]:
    from tqdm import tqdm

    from hpcsnp.resources import granted_cpus

    run_dir = Path(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    todo = []
    for s in stores:
        store = open_store(s)  # fail early on a bad store, before hours of training
        todo += [(store, i) for i in range(1, store.n_folds + 1)]
    n_jobs, per_fold = plan_jobs(granted_cpus(threads), len(todo), jobs, _mem_available_gb())
    results, failed = [], []
    bar = tqdm(total=len(todo), desc="folds", unit="fold", file=sys.stderr, disable=not progress)
    if n_jobs > 1:
        bar.write(f"{n_jobs} folds at a time, {per_fold} thread(s) each")

    def one(store, i):
        t0 = time.perf_counter()
        name = store.name
        done = fold_dir(run_dir, name, i)
        log_path = run_dir / "logs" / f"{name}_fold{i}.log"
        common = [str(store.path), "--fold", str(i), "--run", str(run_dir), "--threads", str(per_fold)]
        cmds = []
        if force or not is_complete(done):
            cmds.append(["train", *common, "--config", str(config_path)] + (["--force"] if force else []))
        if baseline:
            cmds.append(["baseline", *common] + (["--force"] if force else []))
        rcs = {}
        with open(log_path, "a") as log:
            for cmd in cmds:
                proc = subprocess.run([sys.executable, "-m", "hpcsnp", *cmd], stdout=log,
                                      stderr=None if verbose else log)
                rcs[cmd[0]] = proc.returncode
        return store, i, done, log_path, rcs, time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        futures = [pool.submit(one, store, i) for store, i in todo]
        for fut in as_completed(futures):
            store, i, done, log_path, rcs, secs = fut.result()
            if rcs.get("train", 0) != 0 or not is_complete(done):
                failed.append((store.name, i, log_path))
                bar.write(f"{store.name} fold {i}: FAILED (exit {rcs.get('train')}); log: {log_path}")
            else:
                m = json.loads((done / "metrics.json").read_text())
                results.append(m)
                if "train" in rcs:
                    bar.write(f"{store.name} fold {i}: PCC {m['pcc']:.4f}, {m['epochs']} epochs, {secs:.0f}s")
            if rcs.get("baseline", 0) != 0:  # the CNN fold stands; reduce reports without this baseline
                bar.write(f"{store.name} fold {i}: baseline failed (exit {rcs['baseline']}; it needs "
                          f"O(n^2 + n p) memory); log: {log_path}")
            bar.update()
    bar.close()
    if failed:
        lines = [f"{len(failed)} fold(s) failed:"] + [f"  {n} fold {i}: see {p}" for n, i, p in sorted(failed)]
        lines.append(f"rerun `hpcsnp cv ... --run {run_dir}` to redo only the failed folds")
        raise FoldFailedError("\n".join(lines))
    return results
