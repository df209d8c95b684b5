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


class _Records:
    """What a source has yielded so far, to refuse a SNP given twice: the same ID (or, without
    one, the same CHROM_POS name), or the same site and alleles under another ID.  Two
    records of one SNP would leave a reader to pick one of them silently."""

    def __init__(self, path, hint: str):
        self.path, self.hint = path, hint
        self.names: dict = {}
        self.sites: dict = {}

    def add(self, name: str, contig: str, pos: int, alleles, where: str) -> None:
        site = (str(contig), int(pos), *(str(a).upper() for a in alleles))
        first = self.names.get(name) or self.sites.get(site)
        if first is not None:
            raise InputError(f"{self.path}: {where}: variant {name} ({contig}:{pos} {alleles[0]}>{alleles[1]}) is "
                             f"already given at {first}; each SNP must be one record ({self.hint})")
        self.names[name] = self.sites[site] = where


def _header_lines(path: Path) -> int:
    """The number of header lines (``#``...) of a text VCF, plain or (b)gzipped."""
    import gzip

    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    n = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
        for line in fh:
            if not line.startswith(b"#"):
                break
            n += 1
    return n


class VcfSource:
    """A VCF/BCF read record by record.  One record is one biallelic SNP: multiallelic sites,
    indels and records of another ploidy are skipped and counted in ``skipped`` (errors with
    ``strict``); a SNP given by two records is an error naming both lines.  A call that the
    record cannot hold (an allele index beyond its one ALT allele, e.g. 2/2 or 0/2, or a
    haploid call in a diploid record) is read as missing and counted in ``invalid_calls``
    (an error with ``strict``)."""

    def __init__(self, path, strict=False):
        try:
            from cyvcf2 import VCF
        except ImportError:
            raise InputError("reading VCF needs cyvcf2: pip install cyvcf2") from None
        self.path, self.strict = Path(path), strict
        if not self.path.is_file():
            raise InputError(f"{path}: no such file")
        try:
            self.vcf = VCF(str(path), gts012=True, lazy=True)
        except (OSError, Exception) as e:  # cyvcf2 raises plain Exception for a bad header
            raise InputError(f"{path}: not a readable VCF ({e})") from None
        self.samples = list(self.vcf.samples)
        if not self.samples:
            raise InputError(f"{path}: the VCF has no samples")
        self.skipped, self.invalid_calls, self.unwanted = Counter(), Counter(), 0
        # where a record is: its line in a text VCF, its number in a BCF
        self._header_lines = None if self.path.name.lower().endswith(".bcf") else _header_lines(self.path)

    def _where(self, record: int) -> str:
        return f"record {record}" if self._header_lines is None else f"line {self._header_lines + record}"

    def _calls(self, v, keep, record: int) -> np.ndarray:
        """int8 ALT dosages of the samples ``keep`` (-1 missing), invalid calls read as missing."""
        gt = v.gt_types[keep].astype(np.int8)
        gt[gt == 3] = -1
        a = v.genotype.array()[keep, :2]  # allele indices; -1 missing, -2 no second allele (haploid)
        bad = {"allele index beyond ALT": (a > 1).any(axis=1),
               "haploid call in a diploid record": (a[:, 1] == -2) & (a[:, 0] >= 0)}
        for why, where in bad.items():
            n = int(where.sum())
            if n:
                if self.strict:
                    j = int(np.flatnonzero(where)[0])
                    raise InputError(f"{self.path}: {self._where(record)}: {v.CHROM}:{v.POS}: sample "
                                     f"{self.samples[keep[j]]}: {why} ({n} call(s) in this record; drop --strict "
                                     "to read them as missing)")
                self.invalid_calls[why] += n
                gt[where] = -1
        return gt

    def blocks(self, keep, block=1024, wanted=None):
        """(ids, contigs, positions, (REF, ALT) pairs, int8 dosages [variants, samples]) per
        block of variants.  ``wanted(name, contig, pos)``: read only the variants it accepts
        (the others are counted in ``unwanted``, their genotypes never decoded)."""
        keep = np.asarray(keep)
        ids, contigs, positions, alleles, rows = [], [], [], [], []
        seen = _Records(self.path, "remove duplicates with `bcftools norm -d exact`, or give the records "
                                   "distinct IDs with `bcftools annotate --set-id '%CHROM\\_%POS\\_%REF\\_%FIRST_ALT'`")
        try:
            for record, v in enumerate(self.vcf, start=1):
                why = None
                if len(v.ALT) != 1:
                    why = "multiallelic" if len(v.ALT) > 1 else "no ALT allele"
                elif not v.is_snp:
                    why = "not a SNP (indel or other)"
                elif v.ploidy != 2:
                    why = f"ploidy {v.ploidy}"
                if why:
                    if self.strict:
                        raise InputError(f"{self.path}: {self._where(record)}: {v.CHROM}:{v.POS}: {why} (drop "
                                         "--strict to skip such sites)")
                    self.skipped[why] += 1
                    continue
                name = v.ID or f"{v.CHROM}_{v.POS}"
                if wanted is not None and not wanted(name, v.CHROM, v.POS):
                    self.unwanted += 1
                    continue
                seen.add(name, v.CHROM, v.POS, (v.REF, v.ALT[0]), self._where(record))
                ids.append(name)
                contigs.append(v.CHROM)
                positions.append(v.POS)
                alleles.append((v.REF, v.ALT[0]))
                rows.append(self._calls(v, keep, record))
                if len(rows) == block:
                    yield ids, contigs, positions, alleles, np.stack(rows)
                    ids, contigs, positions, alleles, rows = [], [], [], [], []
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{self.path}: corrupt VCF ({type(e).__name__}: {e})") from None
        if rows:
            yield ids, contigs, positions, alleles, np.stack(rows)


class PlinkSource:
    """A PLINK 1 file set (.bed/.bim/.fam); a SNP given by two .bim lines is an error naming
    both."""

    def __init__(self, bfile, strict=False):
        try:
            from bed_reader import open_bed
        except ImportError:
            raise InputError("reading PLINK needs bed-reader: pip install bed-reader") from None
        prefix = str(bfile)[:-4] if str(bfile).endswith(".bed") else str(bfile)
        self.path = Path(prefix + ".bed")
        self.bim = Path(prefix + ".bim")
        for ext in (".bed", ".bim", ".fam"):
            if not Path(prefix + ext).is_file():
                raise InputError(f"{prefix}{ext}: no such file (PLINK needs .bed, .bim and .fam)")
        try:
            self.bed = open_bed(self.path)
            self.samples = [str(s) for s in self.bed.iid]
            self.sid, self.chrom = self.bed.sid, self.bed.chromosome
            self.pos = self.bed.bp_position
            # bed-reader counts allele_1 (A1): the ALT allele of the store; allele_2 is REF
            self.alleles = list(zip(self.bed.allele_2, self.bed.allele_1))
        except Exception as e:
            raise InputError(f"{self.path}: not a readable PLINK file set ({e})") from None
        self.skipped, self.invalid_calls, self.unwanted = Counter(), Counter(), 0

    def blocks(self, keep, block=1024, wanted=None):
        """As ``VcfSource.blocks``: blocks of the variants ``wanted`` accepts (all without it)."""
        names = [s if s not in ("", ".") else f"{c}_{p}" for s, c, p in zip(self.sid, self.chrom, self.pos)]
        cols = np.arange(len(names))
        if wanted is not None:
            cols = np.asarray([j for j in cols if wanted(names[j], str(self.chrom[j]), int(self.pos[j]))],
                              dtype=np.int64)
            self.unwanted = len(names) - len(cols)
        seen = _Records(self.bim, "remove or rename one of them, e.g. with plink2 --rm-dup")
        for j in cols:
            seen.add(names[j], str(self.chrom[j]), int(self.pos[j]), self.alleles[j], f"line {j + 1}")
        for start in range(0, len(cols), block):
            sel = cols[start:start + block]
            try:
                g = self.bed.read(index=np.s_[keep, sel], dtype="int8", order="C")
            except Exception as e:
                raise InputError(f"{self.path}: corrupt .bed ({e})") from None
            g = g.T.copy()
            g[(g < 0) | (g > 2)] = -1
            yield ([names[j] for j in sel], [str(self.chrom[j]) for j in sel], [int(self.pos[j]) for j in sel],
                   [self.alleles[j] for j in sel], g)


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
