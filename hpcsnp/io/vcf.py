"""VCF and BCF as a genotype source (cyvcf2), variant by variant: one record is one biallelic
SNP; multiallelic sites, indels and records of another ploidy are skipped and counted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from hpcsnp.errors import InputError
from hpcsnp.io.records import Records


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
        seen = Records(self.path, "remove duplicates with `bcftools norm -d exact`, or give the records "
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
