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

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from hpcsnp.errors import FoldFailedError, InputError
from hpcsnp.resources import granted_cpus
from hpcsnp.rundir import METRICS_JSON, RunDir, dataset_name, read_json
from hpcsnp.store import open_store
from hpcsnp.traits import trait_label, view_options

logger = logging.getLogger(__name__)
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


def plan_datasets(stores, names=(), run_dir=None, *, force=False, traits=(), pheno=None, covar=None,
                  covar_names=()) -> list[tuple]:
    """(open store, data-set name) per store, and per trait of ``traits`` (columns of the
    phenotype table ``pheno``: hpcsnp/traits.py), checked before hours of training: every
    store opens, every trait has values, names are plain and distinct, and a data set
    already in the run comes from the same write of its store and the same trait values
    (unless ``force``, which redoes it).  A trait's data set is named <store>.<trait>, or
    <name>.<trait> with --name.  ``covar``: a covariate table, its ``covar_names`` [all] the
    fixed effects of every data set."""

    if names and len(names) != len(stores):
        raise InputError(f"--name was given {len(names)} time(s) for {len(stores)} store(s): give one name per "
                         "store, in the same order, or none")
    if traits and pheno is None:
        raise InputError("--traits names columns of a phenotype table: give it with --pheno TABLE")
    plan, seen = [], {}
    for i, s in enumerate(stores):
        for trait in traits or [None]:
            plan.append(_plan_one(s, names[i] if names else None, trait, pheno, covar, covar_names, seen, run_dir,
                                  force))
    return plan


def _plan_one(path, name, trait, pheno, covar, covar_names, seen: dict, run_dir, force) -> tuple:
    store = open_store(path, trait=trait, pheno=pheno, covar=covar, covar_names=covar_names)
    if name is not None and store.trait is not None:
        name = f"{name}.{trait_label(store.trait)}"
    name = dataset_name(store, name)
    if name in seen:
        raise InputError(f"{seen[name]} and {store.path} would both be data set {name!r} in the run; give "
                         f"each store a name, once per store in order: --name {name}_1 --name {name}_2")
    seen[name] = store.path
    info = RunDir(run_dir).dataset_json(name) if run_dir is not None else None
    if info is not None and info.exists() and not force:
        recorded = read_json(info).get("store_id")
        if recorded not in (None, store.store_id):
            what = "another write of the store" + (", other values of the trait" if store.trait else "") + \
                (", other covariates" if store.covariates is not None else "")
            raise InputError(f"{info.parent} holds folds of data set {name!r} from {what} (store id "
                             f"{recorded}; {store.path} is now {store.store_id}): --force redoes them from "
                             "this store, or use another --run or --name")
    return store, name


@dataclass(frozen=True)
class TaskResult:
    """One fold process: what it ran, its exit status (None: skipped, already finished)."""

    kind: str  # train | baseline
    dataset: str
    fold: int
    log: Path
    rc: int | None
    seconds: float


@dataclass
class CvOutcome:
    results: list  # metrics of every finished CNN fold
    failed_baselines: list = field(default_factory=list)  # (dataset, fold, cause, log path)

    def raise_for_failed_baselines(self) -> None:
        if not self.failed_baselines:
            return
        lines = [f"{len(self.failed_baselines)} baseline fit(s) failed; the summary above has no baseline or "
                 "ensemble for them:"]
        lines += [f"  {n} fold {i}: {cause} (log: {log})" for n, i, cause, log in sorted(self.failed_baselines)]
        lines.append("rerun the same `hpcsnp cv` command to redo only what failed")
        raise FoldFailedError("\n".join(lines))


def failure_cause(log_path: Path) -> str:
    """The error line a failed hpcsnp process wrote last to its log (else its last line); for a
    crash in a native library, the crash and the innermost Python call (faulthandler's trace)."""
    try:
        lines = [ln.strip() for ln in Path(log_path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.startswith("hpcsnp: "):
            return ln.removeprefix("hpcsnp: ")
    crash = [i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error: ")]
    if crash:
        i = crash[-1]
        current = next((j for j in range(i, len(lines)) if lines[j].startswith("Current thread")), i)
        where = next((ln for ln in lines[current:] if ln.startswith("File ")), "")
        return (f"{lines[i].removeprefix('Fatal Python error: ')} in a native library"
                f"{', at ' + where if where else ''} (docs/usage.md, Troubleshooting)")
    return lines[-1] if lines else "no output"


class Children:
    """The fold processes of one cv: each learns our pid (HPCSNP_PARENT_PID) and asks the
    kernel to SIGTERM it when we die, even by SIGKILL; ``stop`` ends them on any other exit."""

    def __init__(self):
        self.live, self.lock, self.stopped = set(), threading.Lock(), False

    def run(self, argv, *, stdout, stderr, env):
        env = {**(env or os.environ), "HPCSNP_PARENT_PID": str(os.getpid())}
        with self.lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
            self.live.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.live.discard(proc)

    def stop(self, grace: float = 30.0) -> None:
        with self.lock:
            self.stopped = True
            procs = list(self.live)
        for p in procs:
            with contextlib.suppress(OSError):
                p.terminate()  # a fold checkpoints and exits 143 on SIGTERM
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()


def run_cv(plan, run_dir, *, config_path: Path, threads=None, jobs=None, force=False, verbose=False,
           progress=True, baseline=False, solver: str = "auto") -> CvOutcome:
    """Every fold of every (store, name) of ``plan`` (from plan_datasets), then the baselines."""
    from tqdm import tqdm


    run = RunDir(run_dir)
    run.logs.mkdir(parents=True, exist_ok=True)
    todo = [(store, name, i) for store, name in plan for i in range(1, store.n_folds + 1)]
    cores = granted_cpus(threads)
    n_jobs, per_fold = plan_jobs(cores, len(todo), jobs, _mem_available_gb())
    results, failed, failed_baselines = [], [], []
    bar = tqdm(total=len(todo), desc="folds", unit="fold", file=sys.stderr, disable=not progress)

    def say(message):  # above the bar, on stderr (tqdm.write's default is stdout)
        tqdm.write(message, file=sys.stderr)
    if n_jobs > 1:
        say(f"{n_jobs} folds at a time, {per_fold} thread(s) each")

    slots = queue.SimpleQueue()  # each concurrent task gets its own cores (HPCSNP_CPUS), when they are ours
    for cpus in core_slots(n_jobs, per_fold, cores):
        slots.put(cpus)
    children = Children()

    def one(kind, store, name, i):
        cpus = slots.get()
        try:
            return run_task(kind, store, name, i, cpus)
        finally:
            slots.put(cpus)

    def run_task(kind, store, name, i, cpus):
        t0 = time.perf_counter()
        log_path = run.task_log(name, i, kind)
        cmd = [kind, str(store.path), "--fold", str(i), "--run", str(run), "--threads", str(per_fold),
               "--name", name]
        cmd += (["--config", str(config_path)] if kind == "train" else ["--solver", solver])
        cmd += view_options(store.trait, store.trait_source, store.covariate_source, store.covariate_columns)
        cmd += ["--force"] if force else []
        if kind == "train" and not force and run.is_complete(name, i):
            return TaskResult(kind, name, i, log_path, None, 0.0)
        env = {**os.environ, "HPCSNP_CPUS": ",".join(map(str, cpus))} if cpus else None
        logger.debug(f"starting: hpcsnp {' '.join(cmd)} (cpus {cpus or 'any'}; log {log_path})")
        with open(log_path, "a") as log:
            rc = children.run([sys.executable, "-m", "hpcsnp", *cmd], stdout=log,
                              stderr=None if verbose else log, env=env)
        return TaskResult(kind, name, i, log_path, rc, time.perf_counter() - t0)

    # every CNN fold first, then the baselines: the pool takes tasks in this order, so the
    # short baseline fits fill the cores at the end instead of one long fold running alone
    tasks = [("train", *t) for t in todo] + ([("baseline", *t) for t in todo] if baseline else [])
    pool, futures = ThreadPoolExecutor(max_workers=n_jobs), []
    try:
        futures = [pool.submit(one, *t) for t in tasks]
        for fut in as_completed(futures):
            t = fut.result()
            if t.kind == "baseline":
                if t.rc != 0:  # the CNN fold stands; reduce reports without this baseline
                    cause = failure_cause(t.log)
                    failed_baselines.append((t.dataset, t.fold, cause, t.log))
                    say(f"{t.dataset} fold {t.fold}: baseline FAILED (exit {t.rc}): {cause}; log: {t.log}")
                continue
            if t.rc or not run.is_complete(t.dataset, t.fold):
                failed.append((t.dataset, t.fold, failure_cause(t.log), t.log))
                say(f"{t.dataset} fold {t.fold}: FAILED (exit {t.rc}): {failed[-1][2]}; log: {t.log}")
            else:
                m = read_json(run.fold(t.dataset, t.fold) / METRICS_JSON)
                results.append(m)
                if t.rc is not None:
                    say(f"{t.dataset} fold {t.fold}: PCC {m['pcc']:.4f}, {m['epochs']} epochs, {t.seconds:.0f}s")
            bar.update()
    except BaseException:  # interrupted (SIGTERM, Ctrl-C) or failing: no fold outlives us
        for f in futures:
            f.cancel()
        children.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if failed:
        lines = [f"{len(failed)} fold(s) failed:"]
        lines += [f"  {n} fold {i}: {c} (log: {p})" for n, i, c, p in sorted(failed)]
        lines.append(f"rerun `hpcsnp cv ... --run {run}` to redo only the failed folds")
        raise FoldFailedError("\n".join(lines))
    return CvOutcome(results, failed_baselines)
