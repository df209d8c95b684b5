"""Run every fold of every store, each in a fresh process, then reduce.

The local equivalent of the SLURM array: each fold is exactly one
``hpcsnp train STORE --fold i`` call in a child process (so memory cannot
creep from fold to fold), and, when the baseline is on, one
``hpcsnp baseline STORE --fold i`` call, queued after all training folds so
the short fits fill the cores at the end; logs in ``RUN/logs/``.  Several folds run
at once (``jobs``), sharing the granted cores between them: small
convolutions use one core far better than two, so on a few cores
fold-parallelism beats thread-parallelism.  Finished folds are skipped; a
failed fold does not stop the others, and the reduce runs only when all
folds are finished.
"""

from __future__ import annotations

import json
import os
import queue
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


def core_slots(n_jobs: int, per_fold: int, granted: int, affinity=None) -> list:
    """Disjoint CPU sets, one per concurrent task, taken from this process's affinity mask;
    only when every CPU of the mask is granted to us (a SLURM allocation, a whole machine),
    never under a smaller --threads or a cgroup quota, where other work may own some of
    them.  Otherwise [None] * n_jobs: the kernel places the tasks.
    >>> core_slots(2, 1, 2, {0, 1}), core_slots(2, 2, 4, {4, 5, 6, 7}), core_slots(2, 1, 1, {0, 1})
    ([[0], [1]], [[4, 5], [6, 7]], [None, None])
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:
            return [None] * n_jobs
    cores = sorted(affinity)
    if n_jobs < 2 or granted != len(cores) or n_jobs * per_fold > len(cores):
        return [None] * n_jobs
    return [cores[j * per_fold:(j + 1) * per_fold] for j in range(n_jobs)]


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
    cores = granted_cpus(threads)
    n_jobs, per_fold = plan_jobs(cores, len(todo), jobs, _mem_available_gb())
    results, failed = [], []
    bar = tqdm(total=len(todo), desc="folds", unit="fold", file=sys.stderr, disable=not progress)
    if n_jobs > 1:
        bar.write(f"{n_jobs} folds at a time, {per_fold} thread(s) each")

    slots = queue.SimpleQueue()  # each concurrent task gets its own cores (HPCSNP_CPUS), when they are ours
    for cpus in core_slots(n_jobs, per_fold, cores):
        slots.put(cpus)

    def one(kind, store, i):
        cpus = slots.get()
        try:
            return run_task(kind, store, i, cpus)
        finally:
            slots.put(cpus)

    def run_task(kind, store, i, cpus):
        t0 = time.perf_counter()
        name = store.name
        done = fold_dir(run_dir, name, i)
        log_path = run_dir / "logs" / (f"{name}_fold{i}.log" if kind == "train" else f"{name}_fold{i}.{kind}.log")
        cmd = [kind, str(store.path), "--fold", str(i), "--run", str(run_dir), "--threads", str(per_fold)]
        cmd += (["--config", str(config_path)] if kind == "train" else []) + (["--force"] if force else [])
        if kind == "train" and not force and is_complete(done):
            return kind, store, i, done, log_path, None, 0.0
        env = {**os.environ, "HPCSNP_CPUS": ",".join(map(str, cpus))} if cpus else None
        with open(log_path, "a") as log:
            rc = subprocess.run([sys.executable, "-m", "hpcsnp", *cmd], stdout=log,
                                stderr=None if verbose else log, env=env).returncode
        return kind, store, i, done, log_path, rc, time.perf_counter() - t0

    # every CNN fold first, then the baselines: the pool takes tasks in this order, so the
    # short baseline fits fill the cores at the end instead of one long fold running alone
    tasks = [("train", store, i) for store, i in todo] + ([("baseline", store, i) for store, i in todo]
                                                        if baseline else [])
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        futures = [pool.submit(one, *t) for t in tasks]
        for fut in as_completed(futures):
            kind, store, i, done, log_path, rc, secs = fut.result()
            if kind == "baseline":
                if rc != 0:  # the CNN fold stands; reduce reports without this baseline
                    bar.write(f"{store.name} fold {i}: baseline failed (exit {rc}; it needs "
                              f"O(n^2 + n p) memory); log: {log_path}")
                continue
            if rc or not is_complete(done):
                failed.append((store.name, i, log_path))
                bar.write(f"{store.name} fold {i}: FAILED (exit {rc}); log: {log_path}")
            else:
                m = json.loads((done / "metrics.json").read_text())
                results.append(m)
                if rc is not None:
                    bar.write(f"{store.name} fold {i}: PCC {m['pcc']:.4f}, {m['epochs']} epochs, {secs:.0f}s")
            bar.update()
    bar.close()
    if failed:
        lines = [f"{len(failed)} fold(s) failed:"] + [f"  {n} fold {i}: see {p}" for n, i, p in sorted(failed)]
        lines.append(f"rerun `hpcsnp cv ... --run {run_dir}` to redo only the failed folds")
        raise FoldFailedError("\n".join(lines))
    return results
