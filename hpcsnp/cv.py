"""Run every fold of every store, each in a fresh process, then reduce.

The local equivalent of the SLURM array: each fold is exactly one
``hpcsnp train STORE --fold i`` call in a child process (so memory cannot
creep from fold to fold), with its log in ``RUN/logs/``.  Finished folds are
skipped; a failed fold does not stop the others, and the reduce runs only
when all folds are finished.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from hpcsnp.errors import FoldFailedError
from hpcsnp.store import open_store
from hpcsnp.train import fold_dir, is_complete


def run_cv(stores, run_dir, *, config_path: Path, threads=None, force=False, verbose=False,
           progress=True, baseline=False) -> list[dict]:
    from tqdm import tqdm

    run_dir = Path(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    jobs = []
    for s in stores:
        store = open_store(s)  # fail early on a bad store, before hours of training
        jobs += [(store, i) for i in range(1, store.n_folds + 1)]
    results, failed = [], []
    bar = tqdm(total=len(jobs), desc="folds", unit="fold", file=sys.stderr, disable=not progress)
    for store, i in jobs:
        name = store.name
        done = fold_dir(run_dir, name, i)
        if is_complete(done) and not force:
            results.append(json.loads((done / "metrics.json").read_text()))
            bar.update()
            continue
        cmd = [sys.executable, "-m", "hpcsnp", "train", str(store.path), "--fold", str(i),
               "--run", str(run_dir), "--config", str(config_path)]
        if threads:
            cmd += ["--threads", str(threads)]
        if force:
            cmd.append("--force")
        log_path = run_dir / "logs" / f"{name}_fold{i}.log"
        t0 = time.perf_counter()
        with open(log_path, "a") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=None if verbose else log)
        if proc.returncode != 0 or not is_complete(done):
            failed.append((name, i, log_path))
            bar.write(f"{name} fold {i}: FAILED (exit {proc.returncode}); log: {log_path}")
        else:
            m = json.loads((done / "metrics.json").read_text())
            results.append(m)
            bar.write(f"{name} fold {i}: PCC {m['pcc']:.4f}, {m['epochs']} epochs, "
                      f"{time.perf_counter() - t0:.0f}s")
        bar.update()
    if baseline:
        from hpcsnp.baseline import baseline_fold

        for store, i in jobs:
            try:
                baseline_fold(store.path, i, run_dir, force=force, log=bar.write)
            except MemoryError:
                bar.write(f"{store.name} fold {i}: baseline skipped, out of memory (it needs O(n^2 + n p))")
    bar.close()
    if failed:
        lines = [f"{len(failed)} fold(s) failed:"] + [f"  {n} fold {i}: see {p}" for n, i, p in failed]
        lines.append(f"rerun `hpcsnp cv ... --run {run_dir}` to redo only the failed folds")
        raise FoldFailedError("\n".join(lines))
    return results
