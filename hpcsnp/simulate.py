"""Simulated data sets with planted causal SNPs, in the input format.

Public so that tests, the quick start and benchmarks use the same generator
(as sgkit's simulators are).  Rows are generated and written in blocks, so
large files take bounded memory.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcsnp.errors import InputError


@dataclass
class SimTruth:
    causal: list  # SNP names
    effects: list  # per-allele effect on the phenotype, in phenotype units
    snps: list
    heritability: float


def simulate(path, *, samples=600, snps=500, causal=5, folds=5, missing=0.0, heritability=0.8,
             mean=100.0, sd=10.0, chromosomes=5, seed=0, block=1024) -> SimTruth:
    """Write a TSV (gzip if ``path`` ends in .gz) and a ``<path>.causal.tsv`` truth table.

    Genotypes are independent SNPs, allele frequency U(0.1, 0.9), coded
    0/1/2; ``causal`` SNPs spread over the genome get effects of alternating
    sign with equal share of the genetic variance; ``missing`` is the rate of
    calls set to -1 at random *after* the phenotype was computed.  The
    phenotype has the given mean and sd (in cm, say), deliberately beyond the
    ISRU output bound so un-scaling is exercised.

    >>> import tempfile, os
    >>> t = simulate(os.path.join(tempfile.mkdtemp(), "s.tsv"), samples=30, snps=20, causal=2, folds=3)
    >>> len(t.causal)
    2
    """
    if not 3 <= folds <= 10:
        raise InputError(f"folds must be 3..10, got {folds}")
    if not 0 < causal <= snps:
        raise InputError(f"causal must be 1..{snps}, got {causal}")
    if not 0.0 <= missing < 1.0 or not 0.0 < heritability <= 1.0:
        raise InputError("missing must be in [0, 1) and heritability in (0, 1]")
    if samples < folds * 2:
        raise InputError(f"need at least {folds * 2} samples for {folds} folds")
    rng = np.random.default_rng(seed)
    per_chrom = -(-snps // chromosomes)
    names = [f"Chr{c + 1:02d}_{(j + 1) * 10_000 + int(rng.integers(0, 5_000))}"
             for c in range(chromosomes) for j in range(per_chrom)][:snps]
    freq = rng.uniform(0.1, 0.9, size=snps)
    causal_idx = np.linspace(0, snps - 1, causal + 2).round().astype(int)[1:-1]
    causal_idx = np.unique(causal_idx)
    signs = np.where(np.arange(len(causal_idx)) % 2 == 0, 1.0, -1.0)
    # equal genetic variance per causal SNP: var(beta * x) = beta^2 * 2p(1-p)
    beta = signs / np.sqrt(2 * freq[causal_idx] * (1 - freq[causal_idx]) * len(causal_idx))
    fold_of = (rng.permutation(samples) % folds) + 1
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    g_scale = np.sqrt(heritability)
    e_scale = np.sqrt(1 - heritability)
    with opener(path, "wt", newline="\n") as f:
        f.write("\t".join(["fold", "phenotype", *names]) + "\n")
        for start in range(0, samples, block):
            m = min(block, samples - start)
            g = rng.binomial(2, freq, size=(m, snps)).astype(np.int8)
            genetic = (g[:, causal_idx] - 2 * freq[causal_idx]) @ beta
            y = mean + sd * (g_scale * genetic + e_scale * rng.standard_normal(m))
            if missing > 0:
                g[rng.random((m, snps)) < missing] = -1
            body = np.char.mod("%d", g)
            for i in range(m):
                f.write(f"{fold_of[start + i]}\t{y[i]:.4f}\t" + "\t".join(body[i]) + "\n")
    effects = (sd * g_scale * beta).tolist()
    truth = SimTruth(causal=[names[i] for i in causal_idx], effects=effects, snps=names,
                     heritability=heritability)
    with open(path.with_name(path.name + ".causal.tsv"), "w") as f:
        f.write("snp\teffect\n")
        for name, eff in zip(truth.causal, effects):
            f.write(f"{name}\t{eff:.6f}\n")
    return truth


def simulate_store(path, *, samples=1000, snps=1000, folds=5, missing=0.0, seed=0, force=False,
                   chunk_rows=None, block=4096):
    """Write a store directly (no text), block by block: for memory and speed benchmarks
    at sizes whose text would be unwieldy.  Phenotype = sum of 10 evenly spaced SNPs + noise."""
    from hpcsnp.ingest import StoreWriter

    rng = np.random.default_rng(seed)
    names = [f"Chr{1 + j * 10 // snps:02d}_{1000 * (j + 1)}" for j in range(snps)]
    freq = rng.uniform(0.1, 0.9, size=snps)
    causal = np.linspace(0, snps - 1, 12).round().astype(int)[1:-1]
    writer = StoreWriter(path, names, force=force, chunk_rows=chunk_rows)
    y = np.empty(samples, dtype=np.float32)
    try:
        for start in range(0, samples, block):
            m = min(block, samples - start)
            g = (rng.random((m, snps)) < freq).astype(np.int8) + (rng.random((m, snps)) < freq)
            y[start:start + m] = g[:, causal].sum(1) + rng.standard_normal(m)
            if missing > 0:
                g[rng.random((m, snps)) < missing] = -1
            writer.add_block(g)
        fold = ((rng.permutation(samples) % folds) + 1).astype(np.int8)
        writer.finish([str(i + 1) for i in range(samples)], y, fold,
                      {"n_folds": folds, "source": {"simulated": True, "seed": seed}})
    except BaseException:
        writer.abort()
        raise
