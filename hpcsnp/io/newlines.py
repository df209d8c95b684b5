"""Genotypes of new lines (no phenotype needed), read as a stream and aligned with a run's
training store.

Inputs: a text table (an id column and SNP columns in any order; ``fold`` and
``phenotype`` columns may be present and are ignored), a VCF/VCF.gz, a PLINK file set, or
an hpcsnp store.  Every source yields blocks of (sample ids, int8 codes over *its own*
columns); ``align`` maps those columns onto the training SNPs once, and
``Alignment.apply`` turns each block into the training layout: SNPs matched by name, else
by contig + position where both sides have one; dosages flipped where the alleles are
swapped; SNPs absent from the input (or whose alleles do not match) become the missing
category (-1).  VCF and PLINK files are variant-major, so they are transposed first
through a temporary int8 array on disk (only the variants that can match), never held in
memory.  This module must not import TensorFlow.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hpcsnp.errors import InputError, ParseError
from hpcsnp.io.plink import PlinkSource
from hpcsnp.io.text import header_names, numbered_lines, open_text, parse_genotypes, sample_id, split_rows
from hpcsnp.io.vcf import VcfSource
from hpcsnp.store import first_duplicate, is_hpcsnp_store, open_store, parse_marker_name, read_genotype_rows

logger = logging.getLogger(__name__)

IGNORED_COLUMNS = frozenset({"fold", "phenotype"})


@dataclass
class VariantMeta:
    """The SNP columns of an input: names, contig, position (-1 unknown), REF/ALT (None
    when the input knows no alleles)."""

    ids: np.ndarray
    contig: np.ndarray
    position: np.ndarray
    alleles: np.ndarray | None = None

    @classmethod
    def of_store(cls, store) -> "VariantMeta":
        return cls(store.variant_id, store.contig, store.position, store.alleles)

    @classmethod
    def from_lists(cls, ids, contig, position, alleles=None) -> "VariantMeta":
        a = None if alleles is None else np.asarray(alleles, dtype=object).reshape(-1, 2)
        return cls(np.asarray(ids, dtype=object), np.asarray(contig, dtype=object),
                   np.asarray(position, dtype=np.int64), a)


def _contig_key(contig: str) -> str:
    """Contig names compared without case, a 'chr' prefix or leading zeros: chr01 = 1.

    >>> _contig_key("chr01"), _contig_key("Gm01"), _contig_key("X")
    ('1', 'gm01', 'x')
    """
    c = str(contig).lower()
    c = c[3:] if c.startswith("chr") else c
    if c.isdigit():
        return c.lstrip("0") or "0"
    return c


def _position_keys(meta: VariantMeta) -> dict:
    """(contig, position) -> column, for columns that have both; a key two columns share
    matches neither."""
    keys: dict = {}
    for j, (c, p) in enumerate(zip(meta.contig, meta.position)):
        if p >= 0 and c:
            k = (_contig_key(c), int(p))
            keys[k] = -1 if k in keys else j
    return {k: j for k, j in keys.items() if j >= 0}


@dataclass
class Alignment:
    """Where each training SNP is in the new input: ``index`` (its column, -1 absent) and
    ``flip`` (the input counts the other allele: dosage d becomes 2 - d)."""

    index: np.ndarray
    flip: np.ndarray
    counts: dict
    examples: dict = field(default_factory=dict)

    @property
    def n_training(self) -> int:
        return len(self.index)

    @property
    def overlap(self) -> float:
        """Share of the training SNPs present in the input (allele mismatches count as absent)."""
        return float((self.index >= 0).mean()) if len(self.index) else 0.0

    def apply(self, codes: np.ndarray) -> np.ndarray:
        """int8 codes over the input's columns [b, p_new] -> over the training SNPs [b, p]."""
        out = np.take(codes, np.maximum(self.index, 0), axis=1)
        out[:, self.index < 0] = -1
        if self.flip.any():
            f = out[:, self.flip]
            out[:, self.flip] = np.where(f >= 0, 2 - f, f)
        return out

    def summary(self) -> str:
        c = self.counts
        line = (f"{c['matched']:,} of {c['training_snps']:,} training SNPs present ({100 * self.overlap:.1f} %): "
                f"{c['matched_by_name']:,} by name, {c['matched_by_position']:,} by position; "
                f"{c['flipped']:,} with swapped alleles (dosage flipped); {c['allele_mismatch']:,} whose alleles "
                f"do not match and {c['absent']:,} absent (both read as missing); {c['extra']:,} input SNPs "
                "not in the training set (ignored)")
        return line

    def report(self) -> dict:
        return {**self.counts, "overlap": round(self.overlap, 6),
                "examples": {k: v[:10] for k, v in self.examples.items() if v}}


def align(train: VariantMeta, new: VariantMeta, n_unread_extra: int = 0) -> Alignment:
    """Map the training SNPs onto the input's columns: by name; else by contig + position
    where both sides have them (one input column serves one training SNP).  Where both sides
    know REF/ALT: the same pair keeps the dosage, the swapped pair flips it, anything else
    (another allele, another strand) is absent.  ``n_unread_extra``: input SNPs a source
    already dropped because they could not match (counted as extra).

    >>> t = VariantMeta.from_lists(["a", "b", "c"], ["1", "1", "2"], [10, 20, 30], [("A", "G")] * 3)
    >>> n = VariantMeta.from_lists(["c", "x", "z"], ["2", "chr1", "1"], [30, 20, 99],
    ...                            [("G", "A"), ("A", "G"), ("A", "G")])
    >>> a = align(t, n)
    >>> a.index.tolist(), a.flip.tolist(), a.counts["extra"]
    ([-1, 1, 0], [False, False, True], 1)
    """
    by_name = {name: j for j, name in enumerate(new.ids)}
    by_pos = _position_keys(new)
    p = len(train.ids)
    index = np.full(p, -1, dtype=np.int64)
    flip = np.zeros(p, dtype=bool)
    used = np.zeros(len(new.ids), dtype=bool)
    counts = {"training_snps": p, "input_snps": len(new.ids) + n_unread_extra, "matched": 0,
              "matched_by_name": 0, "matched_by_position": 0, "flipped": 0, "allele_mismatch": 0, "absent": 0}
    examples: dict = {"absent": [], "allele_mismatch": [], "flipped": []}
    for i, name in enumerate(train.ids):
        j, how = by_name.get(name), "matched_by_name"
        if (j is None or used[j]) and train.position[i] >= 0 and train.contig[i]:
            j, how = by_pos.get((_contig_key(train.contig[i]), int(train.position[i]))), "matched_by_position"
        if j is None or used[j]:
            counts["absent"] += 1
            examples["absent"].append(str(name))
            continue
        used[j] = True
        if train.alleles is not None and new.alleles is not None:
            ref, alt = (str(x).upper() for x in train.alleles[i])
            nref, nalt = (str(x).upper() for x in new.alleles[j])
            if ref and alt and nref and nalt and (ref, alt) != (nref, nalt):
                if (ref, alt) == (nalt, nref):
                    flip[i] = True
                    counts["flipped"] += 1
                    examples["flipped"].append(str(name))
                else:
                    counts["allele_mismatch"] += 1
                    examples["allele_mismatch"].append(f"{name} ({ref}/{alt} vs {nref}/{nalt})")
                    continue
        index[i] = j
        counts[how] += 1
        counts["matched"] += 1
    counts["extra"] = int((~used).sum()) + n_unread_extra
    return Alignment(index, flip, counts, examples)


def check_overlap(alignment: Alignment, min_overlap: float, where: str) -> None:
    if alignment.overlap < min_overlap:
        c = alignment.counts
        raise InputError(f"{where}: only {c['matched']:,} of the {c['training_snps']:,} training SNPs "
                         f"({100 * alignment.overlap:.1f} %) are present ({c['absent']:,} absent, "
                         f"{c['allele_mismatch']:,} with other alleles), below --min-overlap {min_overlap:g}; "
                         "check that the file uses the training set's SNP names or positions, or lower --min-overlap")


# --- sources --------------------------------------------------------------------------

class NewLinesHeader(NamedTuple):
    """A new-lines table's header: whether it has an id column, how many columns lead before
    the SNPs, and the SNP names."""

    has_ids: bool
    lead: int
    snps: list[str]


def _parse_header(path, line: bytes) -> NewLinesHeader:
    """The header of a new-lines table."""

    names = header_names(path, line)
    lower = [n.lower() for n in names]
    if len(names) < 2:
        comma = any("," in c for c in names)
        hint = " (the file looks comma-separated; hpcsnp reads tab-separated text)" if comma else ""
        raise ParseError(path, 1, f"header has {len(names)} tab-separated column(s); expected a sample-id column "
                         f"and SNP columns{hint}")
    if lower[0] == "fold":  # the training format without ids: fold, phenotype, SNPs
        has_ids, lead = False, 2
    elif lower[1] == "fold":  # id, fold, phenotype, SNPs
        has_ids, lead = True, 3
    else:
        has_ids, lead = True, 1
        while lead < len(names) and lower[lead] in IGNORED_COLUMNS:
            lead += 1
    if has_ids and parse_marker_name(names[0])[1] >= 0:
        raise ParseError(path, 1, f"column 1 is named {names[0]!r}, which looks like a SNP; the first column "
                         "must hold the sample ids", column=1)
    snps = names[lead:]
    if not snps:
        raise ParseError(path, 1, "header has no SNP columns")
    seen: dict = {}
    for j, name in enumerate(snps):
        col = j + lead + 1
        if not name:
            raise ParseError(path, 1, "empty SNP name in header", column=col)
        if name in seen:
            raise ParseError(path, 1, f"duplicate SNP name {name!r} (also column {seen[name]})", column=col,
                             column_name=name)
        if name.lower() in IGNORED_COLUMNS:
            raise ParseError(path, 1, f"column {name!r} must come before the SNP columns", column=col)
        seen[name] = col
    return NewLinesHeader(has_ids, lead, snps)


class TextLines:
    """A new-lines text table: header checked when opened, rows parsed as ``blocks`` reads
    them, with the same one-line errors as ``ingest`` (invalid codes, ragged rows,
    duplicate ids)."""

    kind = "text"

    def __init__(self, path, *, progress=False):
        from tqdm import tqdm


        self.path = Path(path)
        self.bar = tqdm(total=self.path.stat().st_size, unit="B", unit_scale=True, desc=f"read {self.path.name}",
                        disable=not progress, file=sys.stderr, leave=False)
        self.reader, _ = open_text(self.path, self.bar)
        try:
            self.lines = numbered_lines(self.reader, self.path)
            header = next(self.lines, (1, b""))[1]
            if not header.strip():
                raise ParseError(self.path, 1, "no header row (expected a sample-id column and SNP columns)")
            self.has_ids, self.lead, snps = _parse_header(self.path, header)
        except BaseException:
            self.close()
            raise
        parsed = [parse_marker_name(s) for s in snps]
        self.meta = VariantMeta.from_lists(snps, [c for c, _ in parsed], [p for _, p in parsed])
        self.na_cells = 0

    def blocks(self, rows: int = 1024):

        snps, lead, path = list(self.meta.ids), self.lead, self.path
        seen: dict = {}
        ids, buf = [], np.empty((rows, len(snps)), dtype=np.int8)
        for lineno, parts in split_rows(self.lines, path, lead, len(snps) + lead):
            codes, na = parse_genotypes(path, lineno, parts[lead], snps, lead, strict=False)
            self.na_cells += na
            sid = sample_id(path, lineno, parts[0]) if self.has_ids else str(lineno - 1)
            if sid in seen:
                raise ParseError(path, lineno, f"sample id {sid!r} occurs more than once (also line {seen[sid]})",
                                 column=1)
            seen[sid] = lineno
            buf[len(ids)] = codes
            ids.append(sid)
            if len(ids) == rows:
                yield ids, buf.copy()
                ids = []
        if ids:
            yield ids, buf[:len(ids)].copy()
        if not seen:
            raise ParseError(path, 1, "no data rows after the header")

    def close(self) -> None:
        self.bar.close()
        self.reader.close()


class StoreLines:
    """The samples of an hpcsnp store as new lines (their phenotypes are ignored)."""

    kind = "hpcsnp store"

    def __init__(self, path, **_):

        self.store = open_store(path)
        self.path = self.store.path
        self.meta = VariantMeta.of_store(self.store)

    def blocks(self, rows: int = 1024):

        s = self.store
        step = max(1, rows // s.chunk_rows) * s.chunk_rows
        for lo in range(0, s.n_samples, step):
            hi = min(lo + step, s.n_samples)
            yield list(s.sample_id[lo:hi]), read_genotype_rows(s, lo, hi)

    def close(self) -> None:
        pass


class TransposedLines:
    """A VCF or PLINK file set as new lines: pass 1 streams its variants (those that can match
    the training SNPs: ``wanted``) into a temporary int8 array tiled variants x samples;
    ``blocks`` then reads it one column of tiles (a block of samples) at a time.  Memory:
    one block of variants x all samples, or one block of samples x the kept variants."""

    def __init__(self, source, wanted, *, progress=False, block=1024, rows=1024):
        import zarr
        from tqdm import tqdm


        self.path, self.kind = source.path, type(source).__name__.removesuffix("Source").upper()
        self.samples = list(source.samples)
        dup = first_duplicate(self.samples)
        if dup is not None:
            raise InputError(f"{self.path}: sample id {dup!r} occurs more than once")
        n = len(self.samples)
        self.tmp = Path(tempfile.mkdtemp(prefix="hpcsnp-newlines-"))
        try:
            T = zarr.create_array(str(self.tmp / "variants"), shape=(0, n), chunks=(block, min(rows, n)),
                                  dtype="int8", fill_value=-1)
            ids, contig, pos, alleles = [], [], [], []
            bar = tqdm(desc=f"read {self.path.name}", unit=" variants", disable=not progress, file=sys.stderr,
                       leave=False)
            for bids, bchrom, bpos, balleles, g in source.blocks(np.arange(n), block, wanted=wanted):
                T.append(g, axis=0)
                ids += bids
                contig += bchrom
                pos += bpos
                alleles += balleles
                bar.update(len(bids))
            bar.close()
            self.unread_extra = source.unwanted
            self.skipped = dict(source.skipped)
            self.invalid_calls = dict(source.invalid_calls)
            if self.invalid_calls:
                logger.warning(f"{self.path}: " + ", ".join(f"{v:,} {k}" for k, v in self.invalid_calls.items())
                               + ": read as missing")
            self.T, self.rows = T, rows
            self.meta = VariantMeta.from_lists(ids, contig, pos, alleles)
        except BaseException:
            self.close()
            raise

    def blocks(self, rows: int | None = None):
        rows = self.rows
        for s in range(0, len(self.samples), rows):
            e = min(s + rows, len(self.samples))
            g = np.ascontiguousarray(self.T[:, s:e].T) if self.T.shape[0] else np.zeros((e - s, 0), np.int8)
            yield self.samples[s:e], g

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def wanted_by(train: VariantMeta):
    """A test of whether an input variant (name, contig, position) can match a training SNP."""
    names = set(train.ids)
    keys = {(_contig_key(c), int(p)) for c, p in zip(train.contig, train.position) if p >= 0 and c}
    return lambda name, contig, pos: name in names or (_contig_key(contig), int(pos)) in keys


def open_new_lines(path=None, *, bfile=None, train: VariantMeta, progress=False, rows=1024):
    """The right source for a path (text, VCF/VCF.gz, an hpcsnp store) or a PLINK prefix."""

    if bfile is not None:
        if path is not None:
            raise InputError("give GENOTYPES or --bfile, not both")
        return TransposedLines(PlinkSource(bfile), wanted_by(train), progress=progress, rows=rows)
    if path is None:
        raise InputError("no genotypes: give a TSV, VCF or hpcsnp store as GENOTYPES, or --bfile PREFIX")
    p = Path(path)
    if p.is_dir():
        if not is_hpcsnp_store(p):
            raise InputError(f"{p}: a directory that is not an hpcsnp store")
        return StoreLines(p)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    name = p.name.lower()
    if name.endswith((".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")):
        return TransposedLines(VcfSource(p), wanted_by(train), progress=progress, rows=rows)
    if name.endswith(".bed"):
        return TransposedLines(PlinkSource(p), wanted_by(train), progress=progress, rows=rows)
    return TextLines(p, progress=progress)
