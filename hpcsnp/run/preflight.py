"""Preflight: what every fold task of a run will need, memory and time, measured before it runs.

``hpcsnp cv --dry-run`` and ``slurm/submit.sh`` call ``preflight`` before anything is trained.
A SLURM array task runs, for each store, the fold's baselines and then its CNN (``cv_array.sh``),
so a task needs the largest memory of those steps and the sum of their times.  The costs are
measured, not guessed: a probe store of ``PROBE_LINES`` lines drawn from the store (every
SNP) trains ``PROBE_EPOCHS`` short epochs in a process of its own, with the run's settings and
the task's cores, and reports its epoch time, prediction and attribution rates and peak RSS; the
baselines are timed on it the same way (the exact path at two sizes, for how its time grows
with the lines), and the scalable solver's pass over the genotypes is timed in this process.
Those costs are scaled to the store's size:

- an epoch: the store's optimiser steps at the probe's time per step, plus the validation
  fold's predictions;
- a fold: the models it trains x (epochs until early stopping + the refit's epochs: --refit-epochs for the
  warm refit, the best epoch's count for the fresh one) + the
  attributions (linear in the lines) + the process's start-up;
- the epochs: those of the run's finished folds where there are any, else
  ``ASSUMED_BEST_EPOCHS`` + the early-stopping patience (SoyNAM's folds stopped after 9-37
  epochs at the defaults).  This is the one figure not measured before training; a task that
  reaches its time limit is requeued and resumes from its last epoch, so a low guess costs a
  requeue, never the fold;
- memory: the probe's peak RSS, with the store's cached rows in place of the probe's; the exact
  baselines' 24 n^2 + n p bytes; the scalable solver's largest phase (``scalable_memory``).

Then the plan is checked against the grant: a task whose CNN needs more memory than ``--mem``
is refused, and so is a ``--time`` too short for one epoch (or the attributions) to finish
before SLURM's warning; baselines that cannot fit (in memory, or within one task's time: they
are not checkpointed) are switched off at submission, and ``reduce`` reports the run without
them.  Unset ``--mem`` and ``--time`` are sized from the estimate.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcsnp.errors import InputError

PROBE_LINES = 2000  # lines of the probe store (all of a smaller store)
PROBE_STEPS = 24  # optimiser steps of each probe epoch
PROBE_EPOCHS = 3  # the first compiles the step; the others give the time per epoch
ASSUMED_BEST_EPOCHS = 30  # epochs to the best validation epoch when no fold of the run has finished
SIGNAL_MARGIN_S = 360  # cv_array.sh's --signal=B:USR1@300, which SLURM may send up to a minute early
CNN_MEM_MARGIN = 1.1  # the probe trains one model without a refit: on SoyNAM its peak was 8 % under the fold's
MEM_HEADROOM = 1.25  # --mem, when sized here: the estimate x this + 256 MB
TIME_HEADROOM = 1.5  # --time, when sized here: the estimate x this, at least MIN_TIME_S
MIN_TIME_S = 1800
SCALABLE_PASSES = 120  # two-system passes' worth of time per GBLUP fold on the scalable path: at 100,000 x
# 50,000 the dosage and one-hot folds took 32.5 + 57.1 min, ~100 of the probe's two-system passes each
# (bench/RESULTS.md)


# ------------------------------------------------------------------ sbatch options

def parse_mem(text: str) -> int:
    """SLURM's --mem: a number with an optional K/M/G/T suffix, megabytes by default; bytes.

    >>> parse_mem("3G"), parse_mem("500"), parse_mem("1.5g"), parse_mem("2048M") == parse_mem("2G")
    (3221225472, 524288000, 1610612736, True)
    """
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(float(t) * (1 << 20))
    except ValueError:
        raise InputError(f"--mem {text!r}: expected a size such as 4G, 4000M or 4000 (MB)") from None


def parse_time(text: str) -> int:
    """SLURM's --time formats (minutes, minutes:seconds, hours:minutes:seconds, days-hours,
    days-hours:minutes, days-hours:minutes:seconds); seconds.

    >>> [parse_time(t) for t in ("90", "90:30", "4:00:00", "1-0", "1-02:30", "1-02:30:15")]
    [5400, 5430, 14400, 86400, 95400, 95415]
    """
    t = text.strip()
    try:
        days, rest = (t.split("-", 1) if "-" in t else ("0", t))
        parts = [int(x) for x in rest.split(":")]
        if "-" in t:  # days-hours[:minutes[:seconds]]
            h, m, s = (parts + [0, 0])[:3]
            return int(days) * 86400 + h * 3600 + m * 60 + s
        if len(parts) == 1:
            return parts[0] * 60
        if len(parts) == 2:
            return parts[0] * 60 + parts[1]
        h, m, s = parts
        return h * 3600 + m * 60 + s
    except ValueError:
        raise InputError(f"--time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS") from None


def format_time(seconds: float) -> str:
    """Seconds as SLURM's D-HH:MM:SS (HH:MM:SS under a day).

    >>> format_time(5400), format_time(95415)
    ('01:30:00', '1-02:30:15')
    """
    s = int(math.ceil(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


@dataclass
class Grant:
    """What each task asks SLURM for: cores, memory (bytes) and time (seconds); None = not given."""

    cpus: int | None = None
    mem: int | None = None
    time: int | None = None

    @classmethod
    def from_sbatch_args(cls, args: str) -> "Grant":
        """The cores, memory and time in an sbatch option string (as HPCSNP_SBATCH_ARGS).

        >>> g = Grant.from_sbatch_args("--cpus-per-task=4 --mem 3G -t 2:00:00 --partition=long")
        >>> g.cpus, g.mem >> 30, g.time
        (4, 3, 7200)
        >>> Grant.from_sbatch_args("-c8 --mem-per-cpu=1G").mem >> 30
        8
        """
        words = shlex.split(args or "")
        found: dict[str, str] = {}
        names = {"--cpus-per-task": "cpus", "-c": "cpus", "--mem": "mem", "--mem-per-cpu": "mem_per_cpu",
                 "--time": "time", "-t": "time"}
        i = 0
        while i < len(words):
            w = words[i]
            key, value = (w.split("=", 1) + [None])[:2]
            if key in names:
                if value is None:
                    i += 1
                    value = words[i] if i < len(words) else ""
                found[names[key]] = value
            elif w[:2] in ("-c", "-t") and len(w) > 2:  # -c4, -t60
                found[names[w[:2]]] = w[2:]
            i += 1
        cpus = int(found["cpus"]) if "cpus" in found else None
        mem = parse_mem(found["mem"]) if "mem" in found else None
        if mem is None and "mem_per_cpu" in found:
            mem = parse_mem(found["mem_per_cpu"]) * (cpus or 1)
        return cls(cpus, mem, parse_time(found["time"]) if "time" in found else None)


# ------------------------------------------------------------------ the probe

def probe_rows(store, lines: int = PROBE_LINES, seed: int = 0) -> np.ndarray:
    """The probe's lines: whole chunks of rows drawn at random (cheap to read) until there are
    at least ``lines``; every line where the store has no more."""
    n, step = store.n_samples, store.chunk_rows
    if n <= lines:
        return np.arange(n)
    starts = np.random.default_rng(seed).permutation(np.arange(0, n, step))
    taken = np.cumsum([min(s + step, n) - s for s in starts])
    chosen = np.sort(starts[:int(np.searchsorted(taken, lines)) + 1])
    return np.concatenate([np.arange(s, min(s + step, n)) for s in chosen])


def write_probe_store(store, rows: np.ndarray, out: Path):
    """A store of ``rows`` of ``store`` (every SNP, the same folds), read by runs of consecutive
    rows, for the probe."""
    from hpcsnp.store import SampleBlock, read_genotype_rows, write_store

    rows = rows[store.fold[rows] > 0]  # a trait's lines without a value (fold 0) are in no fold
    fold = store.fold[rows]
    if len(np.unique(fold)) < store.n_folds:
        raise InputError(f"{store.path}: the probe's {len(rows)} lines miss a fold; the preflight needs every fold")
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)

    def blocks():
        for run in runs:
            yield SampleBlock([str(i) for i in store.sample_id[run]], store.phenotype[run], store.fold[run],
                              read_genotype_rows(store, int(run[0]), int(run[-1]) + 1))

    alleles = store.alleles.tolist() if store.alleles is not None else None
    return write_store(out, list(store.variant_id), blocks(), attrs={"source": {"probe_of": str(store.path)}},
                       where=f"probe of {store.path}", force=True, chunk_rows=store.chunk_rows,
                       contigs=list(store.contig), positions=list(store.position), alleles=alleles)


def run_timed(cmd, log: Path, env=None) -> tuple[float, float, int]:
    """Run ``cmd``: (wall seconds, peak RSS bytes, exit status), from wait4's rusage."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - t0, usage.ru_maxrss * 1024.0, os.waitstatus_to_exitcode(status)


def _hpcsnp(*args):
    return [sys.executable, "-m", "hpcsnp", "-q", *args]


def _run_probe(cmd, work: Path, what: str) -> tuple[float, float]:
    log = work / f"{what}.log"
    wall, rss, rc = run_timed(cmd, log)
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise InputError(f"the preflight's {what} failed (exit {rc}): " + " | ".join(tail))
    return wall, rss


@dataclass
class CnnProbe:
    """Measured on the probe store: seconds per optimiser step, per predicted line, and of the
    attributions per line of the store (one model), the start-up, and peak RSS less the
    probe's cached rows (bytes)."""

    step_s: float
    predict_line_s: float
    attribution_line_s: float
    startup_s: float
    rss_base: float


def probe_cnn(probe_store: Path, cfg, cpus: int, work: Path) -> CnnProbe:
    """Train fold 1 of the probe store for PROBE_EPOCHS epochs of PROBE_STEPS steps, one model,
    no refit, in a process of its own with ``cpus`` threads."""
    import json

    from hpcsnp.cnn.data import should_cache
    from hpcsnp.store import open_store

    store = open_store(probe_store)
    conf = work / "probe-config.json"
    cfg.replace(max_epochs=PROBE_EPOCHS, steps_per_epoch=PROBE_STEPS, n_models=1, refit=False,
                patience=PROBE_EPOCHS, patience_steps=0).save(conf)
    run = work / "probe-run"
    wall, rss = _run_probe(_hpcsnp("train", probe_store, "--fold", 1, "--run", run, "--config", conf,
                                   "--threads", cpus, "--force"), work, "cnn-probe")
    m = json.loads(next(run.glob("*/fold_1/metrics.json")).read_text())
    predict_s = 1.0 / max(m["predict_samples_per_s"], 1e-9)
    epochs = m.get("epoch_seconds") or [m["seconds"]]
    steady = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
    steps = min(PROBE_STEPS, -(-m["n_train"] // cfg.batch_size))
    step_s = max(steady - m["n_val"] * predict_s, 0.25 * steady) / steps
    attribution = sum(m.get("attribution_seconds", {}).values()) or m.get("saliency_seconds", 0.0)
    lines = m["n_train"] + m["n_val"] + m["n_test"]
    cached_bytes = store.n_samples * store.n_variants if should_cache(cfg, lines, store.n_variants) else 0
    return CnnProbe(step_s=step_s, predict_line_s=predict_s, attribution_line_s=attribution / store.n_samples,
                    startup_s=max(wall - m["total_seconds"], 0.0), rss_base=rss - cached_bytes)


def probe_exact_baseline(probe_store: Path, store, cpus: int, work: Path) -> float:
    """Seconds of the exact baselines (every kind) of one fold at the store's size.  Timed on
    the probe store and, where the store is larger, on half of it: t(m) = a + b m^3, the fixed
    part a (start-up, reading) apart, the rest growing as the eigendecompositions that dominate
    at size (on SoyNAM the time grows as m^1.4 between 1,235 and 2,223 lines, as m^2.6 to 3,705
    and m^2.9 to 5,059: the cube of the probe's increment is the honest extrapolation)."""
    from hpcsnp.store import open_store

    probe = open_store(probe_store)
    opts = ("--fold", 1, "--encoding", "all", "--solver", "exact", "--threads", cpus, "--force")

    def seconds(path: Path, what: str) -> float:
        return _run_probe(_hpcsnp("baseline", path, "--run", work / f"{what}-run", *opts), work, what)[0]

    full = seconds(probe_store, "baseline-probe")
    fitted = len(store.phenotyped)  # the probe holds phenotyped lines only
    if probe.n_samples >= fitted:
        return full
    half = write_probe_store(probe, np.arange(0, probe.n_samples, 2), work / "half.zarr")
    grows = max(full - seconds(half.path, "baseline-half"), 0.0) / (1 - 0.5 ** 3)  # b m^3 at the probe's m
    return max(full - grows, 0.0) + grows * (fitted / probe.n_samples) ** 3


def probe_pass_seconds(probe_store: Path, store, encoding: str, threads: int) -> float:
    """Seconds of one pass of the scalable solver over the store's genotypes (two systems, as a
    fold's fit and inner fit), timed on the probe store and scaled by the lines."""
    from hpcsnp.linear.scalable import Design
    from hpcsnp.resources import dask_context
    from hpcsnp.store import open_store

    probe = open_store(probe_store)
    design = Design(probe, encoding, np.zeros(probe.n_variants), persist=False)
    U = np.ones((design.width, 2))
    masks, means = np.ones((probe.n_samples, 2)), np.zeros((design.width, 2))
    times = []
    with dask_context("threads", threads):
        for _ in range(3):
            t0 = time.perf_counter()
            design.normal(U, masks, means)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * store.n_samples / probe.n_samples


# ------------------------------------------------------------------ the plan

@dataclass
class StorePlan:
    name: str
    n: int
    p: int
    k: int
    n_train: int
    n_val: int
    n_test: int
    models: int
    steps_per_epoch: int
    epochs: int
    epochs_source: str
    epoch_s: float
    cnn_s: float
    cnn_mem: float
    attribution_s: float
    startup_s: float
    baseline: bool = True
    baseline_solver: str = ""
    baseline_why: str = ""
    baseline_s: float = 0.0
    baseline_mem: float = 0.0
    notes: list = field(default_factory=list)


@dataclass
class Preflight:
    stores: list
    grant: Grant
    cpus: int
    mem_needed: float
    task_s: float
    unit_s: float  # the longest piece of work a task must finish at once (an epoch, the attributions)
    refusals: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def baseline(self) -> bool:
        return all(s.baseline for s in self.stores)

    def sbatch(self) -> list[str]:
        """The --mem and --time options the task needs, where the grant does not set them."""
        out = []
        if self.grant.mem is None:
            out.append(f"--mem={max(1, math.ceil((self.mem_needed * MEM_HEADROOM + (256 << 20)) / 2**30))}G")
        if self.grant.time is None:
            out.append(f"--time={format_time(max(MIN_TIME_S, self.task_s * TIME_HEADROOM))}")
        return out

    def shell(self) -> str:
        """The plan as shell assignments for submit.sh."""
        return (f"preflight_sbatch={shlex.quote(' '.join(self.sbatch()))}\n"
                f"preflight_baseline={1 if self.baseline else 0}\n")

    def lines(self) -> list[str]:
        out = []
        for s in self.stores:
            out.append(f"{s.name}: {s.n:,} lines x {s.p:,} SNPs, {s.k} folds; a fold trains {s.models} model(s) on "
                       f"{s.n_train:,} lines, {s.steps_per_epoch:,} steps an epoch")
            out.append(f"  CNN: {_duration(s.epoch_s)} an epoch; {s.epochs} epochs ({s.epochs_source}) -> "
                       f"{_duration(s.cnn_s)} a fold, peak {_gb(s.cnn_mem)}")
            if s.baseline_solver:
                state = "" if s.baseline else "  -> SKIPPED"
                out.append(f"  baselines ({s.baseline_solver}: {s.baseline_why}): {_duration(s.baseline_s)} a fold, "
                           f"peak {_gb(s.baseline_mem)}{state}")
            out += [f"  {note}" for note in s.notes]
        g = self.grant
        out.append(f"each task ({self.cpus} core{'s' if self.cpus > 1 else ''}): peak {_gb(self.mem_needed)}"
                   + (f" of --mem {_gb(g.mem)}" if g.mem else "")
                   + f"; {_duration(self.task_s)} for its folds"
                   + (f" (--time {format_time(g.time)})" if g.time else ""))
        out += self.notes
        if self.sbatch():
            out.append(f"sized here: {' '.join(self.sbatch())}")
        out += [f"REFUSED: {r}" for r in self.refusals]
        return out


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f} GB"


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def finished_epochs(run_dir: Path | None, dataset: str) -> list[int]:
    """Epochs of the run's finished CNN folds of this data set (their first model's)."""
    import json

    if run_dir is None:
        return []
    out = []
    for m in sorted((Path(run_dir) / dataset).glob("fold_*/metrics.json")):
        try:
            out.append(int(json.loads(m.read_text())["epochs"]))
        except (OSError, ValueError, KeyError):
            continue
    return out


def scalable_memory(n: int, p: int, encoding: str, available: int | None) -> int:
    """Bytes of the scalable solver at its peak: REML on at most REML_LINES sampled fitting lines
    (exact, 24 m^2 + m p), or the passes: the eigen preconditioner's subspace ([n + width] x
    (rank + 10), a few copies), decoded blocks on every thread, the int8 codes where persisted.
    Checked against measured peaks: 1.55 GB at 20,000 x 10,000, 1.9 GB at 100,000 x 50,000
    (this gives 1.70 and 1.96 GB)."""
    from hpcsnp.linear.baseline import memory_needed
    from hpcsnp.linear.scalable import BLOCK_BYTES, PRECONDITIONER_RANK, REML_LINES

    fitting = n - n // 5  # at K = 5 the fewest: a fold fits on the training and validation folds
    reml = memory_needed(min(fitting, REML_LINES), p)
    width = p * (4 if encoding == "onehot" else 1)
    persisted = n * p if available is not None and n * p <= available // 8 else 0
    passes = (200 << 20) + 4 * (n + width) * (PRECONDITIONER_RANK + 10) * 8 + 6 * BLOCK_BYTES + persisted
    return max(reml, passes)


def preflight(plan, cfg, *, cpus: int, grant: Grant, run_dir=None, solver: str = "auto", baseline: bool = True,
              probe_lines: int = PROBE_LINES, say=print) -> Preflight:
    """Measure and check every store of ``plan`` (``(Store, name)`` pairs, as run.cv.plan_datasets)
    for tasks of ``cpus`` cores under ``grant``."""
    from hpcsnp.linear.scalable import choose_solver

    stores = []
    work = Path(tempfile.mkdtemp(prefix="hpcsnp-preflight-"))
    try:
        for store, name in plan:
            rows = probe_rows(store, probe_lines)
            say(f"{name}: probing {len(rows):,} of {store.n_samples:,} lines with {cpus} thread(s) ...")
            (work / name).mkdir()
            probe_path = write_probe_store(store, rows, work / name / "probe.zarr").path
            s = _store_plan(store, name, cfg, probe_cnn(probe_path, cfg, cpus, work / name), run_dir)
            if baseline:
                s.baseline_solver, s.baseline_why = choose_solver(store, solver, available=grant.mem)
                try:
                    _probe_baselines(s, store, probe_path, cpus, grant, work / name)
                except InputError as e:  # they would fail in every task: off, and the CNN still runs
                    s.baseline = False
                    s.notes.append(f"baselines skipped: {e}")
            else:
                s.baseline = False
            stores.append(s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return check(stores, grant, cpus)


def _probe_baselines(s: StorePlan, store, probe_path: Path, cpus: int, grant: Grant, work: Path) -> None:
    """The memory and time of a fold's baselines on the solver chosen, into ``s``."""
    from hpcsnp.linear.baseline import memory_needed

    if s.baseline_solver == "exact":
        s.baseline_mem = memory_needed(store.n_samples, store.n_variants)
        s.baseline_s = probe_exact_baseline(probe_path, store, cpus, work)
        return
    s.baseline_mem = max(scalable_memory(store.n_samples, store.n_variants, e, grant.mem) for e in ("dosage", "onehot"))
    s.baseline_s = SCALABLE_PASSES * sum(probe_pass_seconds(probe_path, store, e, cpus) for e in ("dosage", "onehot"))
    s.notes.append(f"baselines: GBLUP by the scalable solver in both encodings, ~{SCALABLE_PASSES} passes each "
                   "(RKHS skipped)")


def check(stores: list, grant: Grant, cpus: int) -> Preflight:
    """The plan of ``stores`` (their measured StorePlans) against the grant: refusals (the CNN
    or the exact baselines the user asked for over --mem; --time too short for one epoch or the
    attributions), baselines switched off where they cannot fit (the scalable solver's memory
    over --mem, or a fold's baselines over one task's --time), and the task's memory and time."""
    refusals, notes = [], []
    for s in stores:
        if s.baseline and grant.mem is not None and s.baseline_mem > grant.mem:
            if s.baseline_solver == "exact":  # auto picks exact only where it fits: --solver exact
                refusals.append(f"{s.name}: --solver exact needs {_gb(s.baseline_mem)} for its n x n matrices, "
                                f"more than --mem {_gb(grant.mem)}; use --solver auto or scalable")
            else:
                s.baseline = False
                s.notes.append(f"baselines skipped: the scalable solver needs ~{_gb(s.baseline_mem)}, more than "
                               f"--mem {_gb(grant.mem)}")
    cnn_mem = max(s.cnn_mem for s in stores)
    unit = max(max(s.epoch_s, s.attribution_s) + s.startup_s for s in stores)
    if grant.time is not None:
        usable = grant.time - SIGNAL_MARGIN_S
        for s in stores:
            if s.baseline and s.baseline_s + s.startup_s > usable:
                s.baseline = False
                s.notes.append(f"baselines skipped: {_duration(s.baseline_s)} a fold does not fit in --time "
                               f"{format_time(grant.time)} less the {SIGNAL_MARGIN_S} s warning (a baseline is not "
                               "checkpointed); raise --time to keep them")
        if unit > usable:
            refusals.append(f"--time {format_time(grant.time)}: a task must finish at least one epoch or the "
                            f"attributions ({_duration(unit)} with start-up) before the requeue warning "
                            f"{SIGNAL_MARGIN_S} s before its limit; give at least "
                            f"{format_time(unit + SIGNAL_MARGIN_S)}")
    mem_needed = max([cnn_mem] + [s.baseline_mem for s in stores if s.baseline])
    task_s = sum(s.cnn_s + (s.baseline_s if s.baseline else 0.0) for s in stores)
    if grant.mem is not None and cnn_mem > grant.mem:
        refusals.append(f"the CNN's fold needs about {_gb(cnn_mem)} and --mem is {_gb(grant.mem)}: give at least "
                        f"--mem={math.ceil(cnn_mem * MEM_HEADROOM / 2**30)}G")
    if grant.time is not None and not refusals and task_s > grant.time - SIGNAL_MARGIN_S:
        notes.append(f"a task's folds take about {_duration(task_s)}, more than --time {format_time(grant.time)}: "
                     f"each task is requeued about {math.ceil(task_s / (grant.time - SIGNAL_MARGIN_S)) - 1} time(s) "
                     "and resumes from its last epoch")
    return Preflight(stores, grant, cpus, mem_needed, task_s, unit, refusals, notes)


def _store_plan(store, name, cfg, cnn: CnnProbe, run_dir) -> StorePlan:
    from hpcsnp.cnn.data import should_cache
    from hpcsnp.folds import fold_split

    split = fold_split(store.fold, store.n_folds, 1)
    n_train, n_val, n_test = len(split.train), len(split.val), len(split.test)
    steps = -(-n_train // cfg.batch_size)
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    patience = cfg.epochs_patience(steps)[0]
    done = finished_epochs(run_dir, name)
    if done:
        epochs, source = max(done), f"the most of this run's {len(done)} finished fold(s)"
        best = max(1, epochs - patience)
    else:
        best = ASSUMED_BEST_EPOCHS
        epochs, source = best + patience, f"assumed: best epoch {best} + patience {patience}"
        if cfg.max_epochs < epochs:
            epochs, source = cfg.max_epochs, f"--epochs {cfg.max_epochs}"
    epoch_s = steps * cnn.step_s + n_val * cnn.predict_line_s
    models = cfg.models_per_fold(n_train)
    refit_steps = -(-(n_train + n_val) // cfg.batch_size) if cfg.refits(models) else 0
    refit_epochs = cfg.refit_epochs if cfg.refit_start == "warm" else min(best, epochs)
    attribution_s = models * cnn.attribution_line_s * store.n_samples
    early_stopped = 1 if cfg.shares_schedule() else models  # the others replay the first one's epochs
    cnn_s = (early_stopped * epochs * epoch_s
             + models * (refit_epochs * refit_steps * cnn.step_s + n_test * cnn.predict_line_s)
             + attribution_s + cnn.startup_s)
    lines = len(store.phenotyped)  # a fold caches the lines of its sets
    cached = lines * store.n_variants if should_cache(cfg, lines, store.n_variants) else 0
    return StorePlan(name, store.n_samples, store.n_variants, store.n_folds, n_train, n_val, n_test, models, steps,
                     epochs, source, epoch_s, cnn_s, (cnn.rss_base + cached) * CNN_MEM_MARGIN, attribution_s,
                     cnn.startup_s)
