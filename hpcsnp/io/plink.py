"""PLINK 1 binary filesets (.bed/.bim/.fam, bed-reader) as a genotype source, in blocks of
variants; dosage counts the .bim A1 allele."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from hpcsnp.errors import InputError
from hpcsnp.io.records import Records


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
        seen = Records(self.bim, "remove or rename one of them, e.g. with plink2 --rm-dup")
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
