"""How long `hpcsnp predict` takes, and how much memory, as the number of new lines grows.

    python bench/bench_predict.py RUN [--lines 5000,20000,100000] [--formats store,tsv]

RUN is a finished run (for example SoyNAM height: `hpcsnp cv height.zarr --run RUN`).
New lines are made from the run's training store: each is a mosaic of two random
training lines (every SNP taken from one of the two), so they look like the breeding
population without being copies.  They are written as an hpcsnp store and/or a TSV
(id + SNP columns), then `hpcsnp predict` runs on each in a fresh process; the script
prints wall time, lines per second and the process's peak resident memory.  Memory must
stay flat as lines grow (the input is streamed); the GBLUP refit is cached by the first
call, which the script makes on a small file before timing (its cost is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def mosaic_blocks(store, n_lines: int, seed: int, block: int = 2048):
    from hpcsnp.store import read_genotype_rows

    rng = np.random.default_rng(seed)
    g = read_genotype_rows(store, 0, store.n_samples)  # the training store: small next to the new lines
    for start in range(0, n_lines, block):
        m = min(block, n_lines - start)
        a, b = rng.integers(0, len(g), m), rng.integers(0, len(g), m)
        pick = rng.random((m, g.shape[1])) < 0.5
        yield [f"NEW{start + i:07d}" for i in range(m)], np.where(pick, g[a], g[b]).astype(np.int8)


def write_new_store(store, path: Path, n: int, seed: int) -> None:
    from hpcsnp.store import StoreWriter

    w = StoreWriter(path, list(store.variant_id), force=True, contigs=list(store.contig),
                    positions=list(store.position))
    ids = []
    try:
        for block_ids, g in mosaic_blocks(store, n, seed):
            w.add_block(g)
            ids += block_ids
        w.finish(ids, np.zeros(n), (np.arange(n) % 3 + 1).astype(np.int8), {"source": {"bench": "mosaic"}})
    except BaseException:
        w.abort()
        raise


def write_new_tsv(store, path: Path, n: int, seed: int) -> None:
    table = np.array([b"-1", b"0", b"1", b"2"])
    with open(path, "wb") as f:
        f.write(("line\t" + "\t".join(store.variant_id) + "\n").encode())
        for ids, g in mosaic_blocks(store, n, seed):
            cells = table[g.astype(np.int64) + 1]
            for sid, row in zip(ids, cells):
                f.write(sid.encode() + b"\t" + b"\t".join(row) + b"\n")


def timed_predict(run: Path, source: Path, out: Path) -> dict:
    """`hpcsnp predict` in a fresh process: wall seconds and that process's peak RSS."""
    code = ("import resource, subprocess, sys, json, time\n"
            "t = time.perf_counter()\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter() - t, 'err': p.stderr[-2000:],"
            " 'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "hpcsnp", "predict", "--run", str(run), str(source),
           "-o", str(out), "--force", "--no-progress"]
    r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    if r["rc"]:
        raise SystemExit(f"hpcsnp predict failed:\n{r['err']}")
    return r


def main(argv=None):
    from hpcsnp.run.predict import choose_dataset
    from hpcsnp.rundir import RunDir
    from hpcsnp.store import open_store

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--lines", default="5000,20000,100000")
    ap.add_argument("--formats", default="store,tsv")
    ap.add_argument("--dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="where the new lines are written [a temporary directory]")
    args = ap.parse_args(argv)
    ds = choose_dataset(RunDir(args.run), args.dataset)
    store = open_store(ds.store)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"run {args.run} ({ds.dataset}: {store.n_samples:,} training lines x {store.n_variants:,} SNPs, "
          f"{ds.n_folds} fold models); new lines in {work}")
    warm = work / "warm.zarr"
    write_new_store(store, warm, 200, args.seed)
    r = timed_predict(args.run, warm, work / "warm.csv")
    print(f"first call (200 lines; refits and caches the GBLUPs unless already cached): {r['seconds']:.1f} s, "
          f"peak {r['peak_mb']:.0f} MB")
    print(f"{'format':>6} {'lines':>8} {'write s':>8} {'predict s':>10} {'lines/s':>9} {'peak MB':>8}")
    for n in [int(x) for x in args.lines.split(",")]:
        for fmt in args.formats.split(","):
            path = work / (f"new_{n}.zarr" if fmt == "store" else f"new_{n}.tsv")
            t = time.perf_counter()
            (write_new_store if fmt == "store" else write_new_tsv)(store, path, n, args.seed + n)
            written = time.perf_counter() - t
            r = timed_predict(args.run, path, work / f"pred_{fmt}_{n}.csv")
            print(f"{fmt:>6} {n:>8,} {written:>8.1f} {r['seconds']:>10.1f} {n / r['seconds']:>9,.0f} "
                  f"{r['peak_mb']:>8.0f}", flush=True)
    print(f"({os.cpu_count()} CPUs here; the new lines are left in {work})")


if __name__ == "__main__":
    main()
