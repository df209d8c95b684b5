"""Ingest benchmark: text MB/s and variants x samples per second, with peak RSS, for the
TSV and the VCF path on synthetic data of a chosen size.

usage: python bench/bench_ingest.py [--samples 10000] [--snps 50000] [--dir /tmp/hpcsnp-bench]
Each ingest runs in a child process; its peak RSS is the child's ru_maxrss.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make(d: Path, samples: int, snps: int):
    from hpcsnp.io.simulate import write_vcf

    rng = np.random.default_rng(0)
    names = [f"Chr{1 + j * 20 // snps:02d}_{1000 * (j + 1)}" for j in range(snps)]
    ids = [f"S{i:06d}" for i in range(samples)]
    tsv, vcf, pheno = d / f"b{samples}x{snps}.tsv", d / f"b{samples}x{snps}.vcf.gz", d / "pheno.tsv"
    if not tsv.exists() or not vcf.exists():
        freq = rng.uniform(0.05, 0.95, snps)
        g = (rng.random((samples, snps)) < freq).astype(np.int8) + (rng.random((samples, snps)) < freq)
        g[rng.random((samples, snps)) < 0.05] = -1
        folds = rng.permutation(samples) % 5 + 1
        y = rng.standard_normal(samples)
        tok = np.array([b"-1\t", b"0\t", b"1\t", b"2\t"], dtype=object)
        with open(tsv, "wb") as f:
            f.write(("sample\tfold\tphenotype\t" + "\t".join(names) + "\n").encode())
            for i in range(samples):
                row = b"".join(tok[g[i].astype(np.int64) + 1])
                f.write(f"{ids[i]}\t{folds[i]}\t{y[i]:.4f}\t".encode() + row[:-1] + b"\n")
        with open(pheno, "w") as f:
            f.write("sample\tphenotype\tfold\n"
                    + "".join(f"{ids[i]}\t{y[i]:.4f}\t{folds[i]}\n" for i in range(samples)))
        write_vcf(vcf, ids, names, g)
    return tsv, vcf, pheno


def run(args):
    """Wall seconds and peak RSS (MB) of one `hpcsnp ingest` process (GNU time's %M)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "hpcsnp", "ingest",
                           *map(str, args), "--force", "--no-progress"],
                          check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - t0, int(proc.stderr.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--snps", type=int, default=50_000)
    ap.add_argument("--dir", default="/tmp/hpcsnp-bench")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tsv, vcf, pheno = make(d, a.samples, a.snps)
    print(f"data: {a.samples:,} samples x {a.snps:,} SNPs (made in {time.perf_counter() - t0:.0f}s); "
          f"TSV {tsv.stat().st_size / 1e6:.0f} MB, VCF.gz {vcf.stat().st_size / 1e6:.0f} MB")
    cells = a.samples * a.snps
    dt, rss = run([tsv, "-o", d / "t.zarr"])
    print(f"TSV ingest: {dt:.1f}s  {tsv.stat().st_size / 1e6 / dt:.1f} MB/s of text  "
          f"{cells / dt / 1e6:.1f} M genotypes/s  peak RSS {rss:.0f} MB")
    dt, rss = run([vcf, "--pheno", pheno, "-o", d / "v.zarr"])
    print(f"VCF ingest: {dt:.1f}s  {cells / dt / 1e6:.1f} M genotypes/s  peak RSS {rss:.0f} MB")
    print(f"cpus: {len(os.sched_getaffinity(0))}")


if __name__ == "__main__":
    main()
