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
from hpcsnp.store import StoreWriter, check_k


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
    check_k(folds)
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
                      {"source": {"simulated": True, "seed": seed}})
    except BaseException:
        writer.abort()
        raise


def write_vcf(path, sample_ids, names, genotypes, alleles=None) -> None:
    """Genotypes [samples, variants] (0/1/2/-1, the count of ALT) as a VCF (gzip if .gz);
    CHROM and POS from names like Chr01_12345, ID '.', REF/ALT from ``alleles`` (pairs;
    default A, G), unphased GT."""
    path = Path(path)
    gt = np.array([b"./.\t", b"0/0\t", b"0/1\t", b"1/1\t"], dtype=object)  # indexed by code + 1
    head = ["##fileformat=VCFv4.2", "##source=hpcsnp.io.simulate"]
    head += [f"##contig=<ID={c}>" for c in dict.fromkeys(n.rsplit("_", 1)[0] for n in names)]
    head += ['##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(sample_ids)]
    f = gzip.open(path, "wb", compresslevel=1) if path.suffix == ".gz" else open(path, "wb")
    alleles = [("A", "G")] * len(names) if alleles is None else alleles
    with f:
        f.write(("\n".join(head) + "\n").encode())
        for j, name in enumerate(names):
            chrom, pos = name.rsplit("_", 1)
            calls = b"".join(gt[genotypes[:, j].astype(np.int64) + 1])
            ref, alt = alleles[j]
            f.write(f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t.\tPASS\t.\tGT\t".encode() + calls[:-1] + b"\n")


def write_plink(prefix, sample_ids, names, genotypes, alleles=None) -> None:
    """Genotypes as PLINK .bed/.bim/.fam (A1 = the counted allele = ALT), via bed-reader;
    ``alleles``: (REF, ALT) pairs, default (A, G)."""
    from bed_reader import to_bed

    val = genotypes.astype(np.float32)
    val[genotypes < 0] = np.nan
    chrom = [n.rsplit("_", 1)[0] for n in names]
    pos = [int(n.rsplit("_", 1)[1]) for n in names]
    alleles = [("A", "G")] * len(names) if alleles is None else alleles
    to_bed(f"{prefix}.bed", val, properties={"iid": list(sample_ids), "fid": list(sample_ids),
                                              "sid": list(names), "chromosome": chrom, "bp_position": pos,
                                              "allele_1": [a for _, a in alleles],
                                              "allele_2": [r for r, _ in alleles]})


def simulate_formats(directory, *, samples=200, snps=100, folds=5, missing=0.05, seed=0):
    """The same simulated data as TSV (with an id column), VCF + phenotype table, and PLINK +
    the same table; returns the paths.  Holds the matrix in memory: for tests and demos."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tsv = d / "sim.tsv"
    simulate(tsv, samples=samples, snps=snps, causal=min(3, snps), folds=folds, missing=missing, seed=seed)
    import pandas as pd

    table = pd.read_csv(tsv, sep="\t")
    ids = [f"S{i + 1:05d}" for i in range(len(table))]
    names = list(table.columns[2:])
    g = table.iloc[:, 2:].to_numpy(np.int8)
    table = pd.concat([pd.DataFrame({"sample": ids}), table], axis=1)  # insert() warns on wide frames
    table.to_csv(tsv, sep="\t", index=False)
    families = [f"F{(i * 7) % max(2, folds * 2):02d}" for i in range(len(ids))]
    pd.DataFrame({"sample": ids, "height": table["phenotype"], "fold": table["fold"], "family": families}) \
        .to_csv(d / "pheno.tsv", sep="\t", index=False)
    write_vcf(d / "sim.vcf.gz", ids, names, g)
    write_plink(d / "sim", ids, names, g)
    return {"tsv": tsv, "vcf": d / "sim.vcf.gz", "bfile": d / "sim", "pheno": d / "pheno.tsv"}


# PLINK 1 .bed 2-bit codes by ALT count (A1 = ALT is counted): 2 -> 00, 1 -> 10, 0 -> 11, missing -> 01
BED_CODE = np.array([0b01, 0b11, 0b10, 0b00], dtype=np.uint8)  # indexed by dosage + 1
BED_MAGIC = bytes([0x6C, 0x1B, 0x01])  # SNP-major


def bed_bytes(dosage: np.ndarray) -> bytes:
    """One SNP's calls (ALT counts 0/1/2, -1 missing) packed as a .bed row, four lines a byte.

    >>> bed_bytes(np.array([2, 1, 0, -1, 2], np.int8)).hex()
    '7800'
    """
    codes = BED_CODE[dosage.astype(np.int64) + 1]
    pad = (-len(codes)) % 4
    if pad:
        codes = np.concatenate([codes, np.zeros(pad, np.uint8)])
    c = codes.reshape(-1, 4)
    return (c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)).astype(np.uint8).tobytes()


def simulate_plink(prefix, *, samples=1000, snps=1000, causal=20, families=40, folds=5, missing=0.0,
                   heritability=0.6, chromosomes=10, crossovers=1.5, founder_ld=0.9, heterozygosity=0.01,
                   mean=100.0, sd=10.0, seed=0, progress=None) -> SimTruth:
    """Inbred lines of a nested-association-mapping design as PLINK 1 (``prefix``.bed/.bim/.fam),
    written one SNP at a time in memory of a few vectors of ``samples`` (so 100,000 x 50,000
    takes minutes and megabytes), with ``prefix``.pheno.tsv (sample, phenotype, fold, family) and
    ``prefix``.causal.tsv.

    Each line descends from a common parent and one of ``families`` founders: along each of
    ``chromosomes`` it is a mosaic of the two, switching parent about ``crossovers`` times a
    chromosome, which makes family structure as in SoyNAM.  The parents' haplotypes carry LD
    blocks: at each SNP a parent keeps the allele of the SNP before with probability
    ``founder_ld`` and otherwise draws it anew (frequency U(0.05, 0.95)).  A call is heterozygous with probability
    ``heterozygosity`` and missing with probability ``missing``.  ``causal`` SNPs spread over the
    genome carry effects N(0, 1); the genetic values are scaled to ``heritability`` of the
    phenotype's variance (mean ``mean``, sd ``sd``).  ``progress``: called with the number of
    SNPs written after each chromosome."""
    check_k(folds)
    if not 0 < causal <= snps or not 1 <= families <= samples:
        raise InputError(f"causal must be 1..{snps} and families 1..{samples}")
    if not 0.0 <= missing < 1.0 or not 0.0 < heritability < 1.0:
        raise InputError("missing must be in [0, 1) and heritability in (0, 1)")
    rng = np.random.default_rng(seed)
    prefix = str(prefix)
    family = np.arange(samples) % families
    ids = [f"L{i + 1:06d}" for i in range(samples)]
    fold = (rng.permutation(samples) % folds) + 1
    causal_idx = set(np.linspace(0, snps - 1, causal + 2).round().astype(int)[1:-1].tolist())
    genetic = np.zeros(samples)
    per_chrom = -(-snps // chromosomes)
    rate = crossovers / max(per_chrom, 1)
    names, effects = [], []
    source = alleles = None  # each line's parent and the parents' alleles at the SNP before
    with open(prefix + ".bed", "wb") as bed, open(prefix + ".bim", "w") as bim:
        bed.write(BED_MAGIC)
        for j in range(snps):
            c, k = divmod(j, per_chrom)
            if k == 0:  # a new chromosome: each line starts from either parent
                source = rng.random(samples) < 0.5
                if progress and j:
                    progress(per_chrom)
            else:
                switch = rng.choice(samples, rng.binomial(samples, rate), replace=False)
                source[switch] = ~source[switch]
            fresh = rng.random(families + 1) < rng.uniform(0.05, 0.95)  # [common parent, founders...]
            alleles = fresh if k == 0 else np.where(rng.random(families + 1) < founder_ld, alleles, fresh)
            g = 2 * np.where(source, alleles[1 + family], alleles[0]).astype(np.int8)
            het = rng.choice(samples, rng.binomial(samples, heterozygosity), replace=False)
            g[het] = 1
            name = f"Chr{c + 1:02d}_{(k + 1) * 5_000}"
            if j in causal_idx:
                b = rng.standard_normal()
                genetic += b * (g - g.mean())
                names.append(name)
                effects.append(b)
            if missing > 0:
                g[rng.choice(samples, rng.binomial(samples, missing), replace=False)] = -1
            bed.write(bed_bytes(g))
            bim.write(f"{c + 1}\t{name}\t0\t{(k + 1) * 5_000}\tG\tA\n")
    if progress:
        progress(snps - (snps - 1) // per_chrom * per_chrom)
    scale = sd * np.sqrt(heritability) / (genetic.std() or 1.0)
    y = mean + genetic * scale + sd * np.sqrt(1 - heritability) * rng.standard_normal(samples)
    with open(prefix + ".fam", "w") as fam:
        fam.writelines(f"F{family[i] + 1}\t{ids[i]}\t0\t0\t0\t-9\n" for i in range(samples))
    with open(prefix + ".pheno.tsv", "w") as f:
        f.write("sample\tphenotype\tfold\tfamily\n")
        f.writelines(f"{ids[i]}\t{y[i]:.4f}\t{fold[i]}\tF{family[i] + 1}\n" for i in range(samples))
    truth = SimTruth(causal=names, effects=[e * scale for e in effects], snps=[], heritability=heritability)
    with open(prefix + ".causal.tsv", "w") as f:
        f.write("snp\teffect\n")
        f.writelines(f"{n}\t{e:.6f}\n" for n, e in zip(truth.causal, truth.effects))
    return truth
