"""What the variant-major readers (VCF, PLINK) share: the check that each SNP is one record."""

from __future__ import annotations

from hpcsnp.errors import InputError


class Records:
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
