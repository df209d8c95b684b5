"""VCF and PLINK genotypes + a phenotype table -> the same Zarr store as the text path.

VCFs and .bed files are variant-major, the store is sample-major (training
reads whole samples).  Pass 1 streams blocks of variants (cyvcf2 / bed-reader,
never the whole file) into a temporary variant-major array tiled 2-D
(variants x samples); pass 2 reads it one column of tiles at a time and writes
the store's row chunks.  Memory: one block of variants x all samples, plus one
row chunk x all variants.

Dosage is the count of ALT alleles (VCF GT) or of the .bim A1 allele (PLINK:
the ALT allele in files written by plink2 --make-bed); missing calls are -1.
Multiallelic sites, indels and records of another ploidy are skipped and counted
(``strict`` makes them errors).  A variant without an ID is named CHROM_POS.
One record is one biallelic SNP: a SNP given twice (the same ID, or the same
site and alleles) is an error naming both lines; a call the record cannot hold
(an allele index beyond its ALT allele, a haploid call in a diploid record) is
read as missing and counted (an error with ``strict``).
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from hpcsnp.atomic import tmp_name
from hpcsnp.errors import InputError
from hpcsnp.io.pheno import assign_folds, folds_from, group_lookup, match_samples, read_pheno
from hpcsnp.io.text import IngestReport, check_output_path
from hpcsnp.store import (
    SampleBlock,
    check_phenotype_float32,
    default_chunk_rows,
    write_store,
)

logger = logging.getLogger(__name__)


def ingest_genotypes(source, out, *, pheno, pheno_column=None, drop_unmatched=False, folds=None, seed=0,
                     folds_file=None, group_column=None, min_maf=0.0, max_missing=1.0,
                     max_sample_missing=1.0, force=False, progress=True, chunk_rows=None,
                     block=1024, groups=None) -> IngestReport:
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out)
    check_output_path(source.path, out, force=force)
    trait, table = read_pheno(pheno, pheno_column)
    keep, n_no_pheno, n_no_geno = match_samples(source.samples, trait, drop_unmatched=drop_unmatched,
                                                source=str(source.path))
    ids = [source.samples[i] for i in keep]
    y = check_phenotype_float32(ids, trait.loc[ids].to_numpy(np.float64))
    n = len(ids)
    crow = chunk_rows or 256
    tmp_v = Path(str(tmp_name(out)) + "-variants")
    shutil.rmtree(tmp_v, ignore_errors=True)
    import zarr

    T = zarr.create_array(str(tmp_v), shape=(0, n), chunks=(block, crow), dtype="int8", fill_value=-1)
    vid, vchrom, vpos, valleles = [], [], [], []
    sample_missing = np.zeros(n, dtype=np.int64)
    filtered = Counter()
    bar = tqdm(desc=f"ingest {source.path.name}", unit=" variants", disable=not progress, file=sys.stderr)
    try:
        for bids, bchrom, bpos, balleles, g in source.blocks(keep, block):
            miss = g < 0
            n_called = (~miss).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                freq = np.where(miss, 0, g).sum(1) / (2 * n_called)
            maf = np.minimum(freq, 1 - freq)
            ok = np.ones(len(g), bool)
            if max_missing < 1.0:
                bad = miss.mean(1) > max_missing
                filtered["missing rate above --max-missing"] += int(bad.sum())
                ok &= ~bad
            if min_maf > 0:
                bad = ~(maf >= min_maf) & ok  # nan (no calls) also fails
                filtered["MAF below --min-maf"] += int(bad.sum())
                ok &= ~bad
            g = g[ok]
            sample_missing += (g < 0).sum(0)
            T.append(g, axis=0)
            sel = np.flatnonzero(ok)
            vid += [bids[i] for i in sel]
            vchrom += [bchrom[i] for i in sel]
            vpos += [bpos[i] for i in sel]
            valleles += [balleles[i] for i in sel]
            bar.update(len(bids))
        bar.close()
        n_var = T.shape[0]
        if n_var == 0:
            raise InputError(f"{source.path}: no variant left (skipped: {dict(source.skipped) or 'none'}; "
                             f"filtered: {dict(filtered) or 'none'})")
        srow = sample_missing / n_var > max_sample_missing
        if srow.all():
            raise InputError(f"every sample has more than {max_sample_missing:.0%} missing calls")
        kept = np.flatnonzero(~srow)
        if srow.any():
            logger.warning(f"dropped {int(srow.sum())} sample(s) with more than {max_sample_missing:.0%} missing calls")
        ids_k = [ids[i] for i in kept]
        if folds_file:
            fold = folds_from(folds_file, ids_k)
            how = f"from {folds_file}"
        elif folds:
            fold_groups = None
            if group_column:
                if group_column not in table.columns:
                    raise InputError(f"{pheno}: no column {group_column!r} for --group-column")
                fold_groups = table.loc[ids_k, group_column].to_numpy()
            fold = assign_folds(ids_k, folds, seed, fold_groups)
            how = f"random, K={folds}, seed {seed}" + (f", whole {group_column} groups"
                                                       if fold_groups is not None else "")
        elif "fold" in table.columns:
            fold = folds_from(pheno, ids_k)
            how = f"'fold' column of {pheno}"
        else:
            raise InputError("no folds: give --folds K [--seed S] [--group-column COL], --folds-from FILE, "
                             "or a 'fold' column in the phenotype table")
        yk = y[kept]
        if groups is None and group_column:  # the --pheno column that keeps families together
            if group_column not in table.columns:
                raise InputError(f"{pheno}: no column {group_column!r} for --group-column")
            groups = table[group_column].astype(str).str.strip()
        lookup = None
        if groups is not None:

            lookup = group_lookup(groups, str(source.path))
        step = chunk_rows or default_chunk_rows(n_var)

        def blocks():  # pass 2: the transposed variants, one store chunk of samples at a time
            for s in range(0, len(kept), step):
                rows = kept[s:s + step]
                block_t = T[:, rows[0]:rows[-1] + 1]
                yield SampleBlock(ids_k[s:s + step], yk[s:s + step], fold[s:s + step],
                                  np.ascontiguousarray(block_t[:, rows - rows[0]].T))
        # contig/position as given by the file, not parsed from names
        w = write_store(out, vid, blocks(), where=str(source.path), force=force, chunk_rows=step,
                        contigs=vchrom, positions=vpos, alleles=valleles, groups=lookup, attrs={
                            "fold_assignment": how,
                            "source": {"path": str(source.path.resolve()), "name": source.path.name,
                                       "pheno": str(Path(pheno).resolve()), "pheno_column": trait.name},
                            "skipped_variants": dict(source.skipped), "filtered_variants": dict(filtered),
                            "invalid_calls_read_as_missing": dict(source.invalid_calls),
                            "filters": {"min_maf": min_maf, "max_missing": max_missing,
                                        "max_sample_missing": max_sample_missing},
                            "dropped_samples": {"no_phenotype": n_no_pheno, "phenotype_only": n_no_geno,
                                                "sample_missing": int(srow.sum())}})
        rep = IngestReport(store=str(out), source=str(source.path), n_samples=w.n_samples, n_variants=n_var,
                           n_folds=w.n_folds, fold_sizes={i + 1: int(x) for i, x in enumerate(w.fold_sizes)},
                           missing_rate=w.missing_rate, phenotype_mean=w.phenotype_mean,
                           phenotype_sd=w.phenotype_sd, parsed_positions=n_var, chunk_rows=w.chunk_rows,
                           bytes_read=source.path.stat().st_size)
        rep.seconds = time.perf_counter() - t0
        rep.extra = [f"folds        {how}"]
        if source.skipped:
            rep.extra.append("skipped      " + ", ".join(f"{v} {k}" for k, v in source.skipped.items()))
        if source.invalid_calls:
            invalid = ", ".join(f"{v:,} {k}" for k, v in source.invalid_calls.items())
            rep.extra.append(f"invalid      {invalid} (read as missing)")
            logger.warning(f"{source.path}: {invalid}: read as missing (--strict makes them errors)")
        if filtered:
            rep.extra.append("filtered     " + ", ".join(f"{v} {k}" for k, v in filtered.items()))
        if n_no_pheno or n_no_geno or srow.any():
            rep.extra.append(f"dropped      {n_no_pheno} genotyped without phenotype, {n_no_geno} phenotyped "
                             f"without genotypes, {int(srow.sum())} over --max-sample-missing")
        return rep
    finally:
        bar.close()
        shutil.rmtree(tmp_v, ignore_errors=True)
