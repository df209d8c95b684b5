"""Text genotype table -> int8 Zarr store, streaming, with validation.

Reads the input format of docs/method.md, Data (fold, phenotype, one column per SNP; an
optional leading sample-id column) row by row, so memory holds one chunk of
rows plus per-SNP counters, never the whole matrix.  Every problem is an
``InputError`` naming file, line and column.  Deliberate handlings (all
reported in the summary and stored in the store's attributes):

* gzip is detected from the file's first bytes, not its name;
* a UTF-8 byte-order mark and CRLF line ends are removed;
* genotype cells ``NA``, ``NaN``/``nan``, ``N/A`` and ``.`` are read as
  missing (-1) and counted (``--strict`` makes them errors);
* ``0.0``/``1.0``/``2.0``/``-1.0`` are read as the integer codes;
* blank lines at the end of the file are ignored; a blank line inside is an error;
* rows with a missing phenotype are an error unless
  ``--drop-missing-phenotype`` is given, which drops them and counts them;
* constant SNP columns are kept and reported as a warning.

This module must not import TensorFlow.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcsnp.atomic import check_writable
from hpcsnp.errors import InputError, ParseError
from hpcsnp.io.pheno import group_lookup
from hpcsnp.store import (
    FLOAT32_MAX,
    MAX_FOLDS,
    MIN_FOLDS,
    SampleBlock,
    check_phenotype_float32,  # noqa: F401 - part of the ingest API
    check_replaceable,
    default_chunk_rows,
    parse_marker_name,
    write_store,
)

logger = logging.getLogger(__name__)

MISSING_TOKENS = frozenset({b"NA", b"NaN", b"nan", b"NAN", b"N/A", b"."})
ID_COLUMN_NAMES = frozenset({"id", "sample", "sample_id", "sampleid", "iid", "strain", "line", "taxa"})
_CODES = {b"0": 0, b"1": 1, b"2": 2, b"-1": -1,
          b"0.0": 0, b"1.0": 1, b"2.0": 2, b"-1.0": -1}
_BAD = 127
_LUT = np.full(256, _BAD, dtype=np.int8)
_LUT[ord("0")], _LUT[ord("1")], _LUT[ord("2")], _LUT[ord("m")] = 0, 1, 2, -1
class _Tap(io.RawIOBase):
    """A raw reader that hashes every byte it passes on and feeds a progress bar."""

    def __init__(self, raw, progress=None):
        self.raw, self.progress, self.sha = raw, progress, hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, buf):
        n = self.raw.readinto(buf)
        if n:
            self.sha.update(memoryview(buf)[:n])
            if self.progress is not None:
                self.progress.update(n)
        return n

    def close(self):
        self.raw.close()
        super().close()


def open_text(path: Path, progress=None) -> tuple[io.BufferedReader, _Tap]:
    """A binary line reader over a plain or gzip file (sniffed, not by name)."""
    raw = open(path, "rb")  # noqa: SIM115 - closed through the returned reader
    magic = raw.read(6)
    raw.seek(0)
    for sig, kind in ((b"PK\x03\x04", "a zip archive"), (b"BZh", "bzip2-compressed"),
                      (b"\xfd7zXZ\x00", "xz-compressed"), (b"\x28\xb5\x2f\xfd", "zstd-compressed")):
        if magic.startswith(sig):
            raw.close()
            raise ParseError(path, 1, f"the file is {kind}; hpcsnp reads plain or gzip-compressed text")
    tap = _Tap(raw, progress)
    buffered = io.BufferedReader(tap, buffer_size=1 << 20)
    if magic[:2] == b"\x1f\x8b":
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered), buffer_size=1 << 20), tap
    return buffered, tap


@dataclass
class IngestReport:
    store: str
    source: str
    n_samples: int
    n_variants: int
    n_folds: int
    fold_sizes: dict
    missing_rate: float
    phenotype_mean: float
    phenotype_sd: float
    na_cells: int = 0
    dropped_missing_phenotype: int = 0
    constant_snps: list = field(default_factory=list)
    parsed_positions: int = 0
    chunk_rows: int = 0
    seconds: float = 0.0
    bytes_read: int = 0
    id_column: bool = False
    extra: list = field(default_factory=list)  # lines the VCF/PLINK path adds

    def summary(self) -> str:
        lines = [f"store        {self.store}",
                 f"source       {self.source}",
                 f"samples      {self.n_samples:,}" + ("  (ids from first column)" if self.id_column else ""),
                 f"SNPs         {self.n_variants:,}  ({self.parsed_positions:,} with chromosome/position "
                 "parsed from the name)",
                 f"folds        K={self.n_folds}: " + ", ".join(f"{k}:{v}" for k, v in self.fold_sizes.items()),
                 f"missing      {100 * self.missing_rate:.2f} % of genotype calls",
                 f"phenotype    mean {self.phenotype_mean:.4g}, sd {self.phenotype_sd:.4g}"]
        if self.na_cells:
            lines.append(f"NA cells     {self.na_cells:,} cells written as NA/nan/. were read as missing (-1)")
        if self.dropped_missing_phenotype:
            lines.append(f"dropped      {self.dropped_missing_phenotype:,} rows with a missing phenotype")
        if self.constant_snps:
            lines.append(f"constant     {len(self.constant_snps):,} SNPs have one value in every sample")
        lines += self.extra
        mb = self.bytes_read / 1e6
        rate = mb / self.seconds if self.seconds > 0 else float("nan")
        lines.append(f"chunks       {self.chunk_rows} samples x all SNPs, int8")
        lines.append(f"time         {self.seconds:.1f} s ({mb:.1f} MB read, {rate:.1f} MB/s)")
        return "\n".join(lines)


def check_output_path(source: Path, out: Path, *, force: bool) -> None:
    """Refuse an output that is the input itself, or anything --force may not replace."""
    if out.resolve() == Path(source).resolve():
        raise InputError(f"-o {out} is the input file itself; give the store another name")
    check_replaceable(out, force=force)
    check_writable(out, directory=True)


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def numbered_lines(reader, path):
    """(line number, bytes) of every line; a gzip stream that ends early or is corrupt is a
    ParseError at the line where it broke, not an internal error."""
    lineno = 0
    while True:
        try:
            raw = reader.readline()
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ParseError(path, lineno + 1, f"the gzip stream is truncated or corrupt ({e}); "
                             "the file was not copied or written completely") from None
        if not raw:
            return
        lineno += 1
        yield lineno, raw


def unquote(cell: bytes) -> bytes:
    """A cell without surrounding spaces and one pair of double quotes, as R's write.table
    (quote = TRUE) writes names and ids; a doubled quote inside stands for one.

    >>> unquote(b' "L 1" '), unquote(b'2'), unquote(b'"a""b"')
    (b'L 1', b'2', b'a"b')
    """
    cell = cell.strip()
    if len(cell) >= 2 and cell[:1] == cell[-1:] == b'"':
        return cell[1:-1].replace(b'""', b'"')
    return cell


def sample_id(path, lineno, cell: bytes) -> str:
    """The sample id of a row: its first cell, unquoted; an empty one is a ParseError."""
    sid = unquote(cell).decode("utf-8", "replace")
    if not sid:
        raise ParseError(path, lineno, "empty sample id", column=1)
    return sid


def header_text(path, line: bytes) -> str:
    """The header line as text: a UTF-8 byte-order mark and the line end removed; bytes
    that are not UTF-8 are a ParseError."""
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    line = _strip_eol(line)
    if b"\r" in line:
        raise ParseError(path, 1, "the lines end with a bare carriage return (CR, classic Mac OS); convert them to "
                         "LF or CR LF first, e.g. tr '\\r' '\\n' < IN > OUT")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(path, 1, f"header is not UTF-8 text ({e.reason} at byte {e.start})") from None


def header_names(path, line: bytes) -> list[str]:
    """The header's column names: tab-separated, each without surrounding spaces and quotes."""
    return [unquote(c.encode()).decode() for c in header_text(path, line).split("\t")]


def _parse_header(path, line: bytes) -> tuple[bool, list[str]]:
    names = cols = header_names(path, line)
    if len(cols) < 3:
        comma = any("," in c for c in cols)
        hint = " (the file looks comma-separated; hpcsnp reads tab-separated text)" if comma else ""
        raise ParseError(path, 1, f"header has {len(cols)} tab-separated column(s); expected fold, "
                                  f"phenotype and at least one SNP column{hint}")
    id_col = names[0].lower() in ID_COLUMN_NAMES or (names[1].lower() == "fold" and names[0].lower() != "phenotype")
    fold_at = 1 if id_col else 0
    if names[fold_at].lower() != "fold":
        where = "column 2, after the sample-id column," if id_col else "column 1"
        raise ParseError(path, 1, f"{where} is named {names[fold_at]!r}; expected 'fold' (the format is "
                         "[id,] fold, phenotype, one column per SNP; a first column named "
                         f"{', '.join(sorted(ID_COLUMN_NAMES))} or followed by 'fold' holds sample ids)",
                         column=fold_at + 1)
    pheno = names[fold_at + 1]
    if (not pheno or pheno.lower() in ID_COLUMN_NAMES | {"fold"} or parse_marker_name(pheno)[1] >= 0
            or pheno in cols[fold_at + 2:]):
        raise ParseError(path, 1, f"column {fold_at + 2} should be the phenotype, but it is named "
                         f"{pheno!r}, which looks like " + ("nothing" if not pheno else "a SNP or id column"),
                         column=fold_at + 2)
    snps = cols[fold_at + 2:]
    if not snps:
        raise ParseError(path, 1, "header has no SNP columns")
    seen = {}
    first = 4 if id_col else 3
    for j, name in enumerate(snps):
        col = j + first
        if not name:
            trailing = " (the header ends with a tab)" if j == len(snps) - 1 else ""
            raise ParseError(path, 1, f"empty SNP name in header{trailing}", column=col)
        if name in seen:
            raise ParseError(path, 1, f"duplicate SNP name {name!r} (also column {seen[name]})",
                             column=col, column_name=name)
        seen[name] = col
    return id_col, snps


def _parse_genotypes_slow(path, lineno, fields, snps, first_col, strict):
    """Cell by cell, for lines the fast path refused: locate the problem or read NA tokens."""
    out = np.empty(len(snps), dtype=np.int8)
    na = 0
    for j, tok in enumerate(fields):
        tok = unquote(tok)
        code = _CODES.get(tok)
        if code is None:
            if tok in MISSING_TOKENS and not strict:
                code, na = -1, na + 1
            else:
                shown = tok.decode("utf-8", "replace") if tok else "an empty cell"
                what = repr(shown) if tok else shown
                raise ParseError(path, lineno, f"genotype {what} is not one of -1, 0, 1, 2"
                                 + ("" if strict else " (or NA/./nan for missing)"),
                                 column=j + first_col, column_name=snps[j])
        out[j] = code
    return out, na


def split_rows(lines, path, lead: int, n_columns: int):
    """(line number, [the ``lead`` leading cells..., the rest of the line]) of every data
    line of ``lines`` (from numbered_lines, after the header): blank lines at the end are
    ignored; a blank line inside the data, or a row that stops before its genotype cells,
    is a ParseError."""
    blank_at = None
    for lineno, raw in lines:
        line = _strip_eol(raw)
        if not line.strip():
            blank_at = blank_at or lineno
            continue
        if blank_at is not None:
            raise ParseError(path, blank_at, "blank line inside the data")
        parts = line.split(b"\t", lead)
        if len(parts) <= lead:
            raise ParseError(path, lineno, f"row has {len(parts)} column(s), header has {n_columns}")
        yield lineno, parts


def parse_genotypes(path, lineno, cells: bytes, snps, lead: int, strict: bool) -> tuple[np.ndarray, int]:
    """The genotype cells of one line (``cells``: the line after its ``lead`` leading
    columns) as int8 codes, and how many NA tokens were read as missing.  A ragged row or an
    invalid code is a ParseError naming the line and the column."""
    n = len(snps)
    # Fast path: every cell one of 0/1/2/-1, one tab between cells.
    r = cells.replace(b"-1", b"m")
    if len(r) == 2 * n - 1:
        a = np.frombuffer(r, dtype=np.uint8)
        codes = _LUT[a[0::2]]
        if not (codes == _BAD).any() and not (n > 1 and (a[1::2] != 9).any()):
            return codes, 0
    fields_ = cells.split(b"\t")
    if len(fields_) != n:
        raise ParseError(path, lineno, f"row has {len(fields_) + lead} columns, header has {n + lead}")
    return _parse_genotypes_slow(path, lineno, fields_, snps, lead + 1, strict)


def _parse_float(path, lineno, col, name, tok: bytes):
    t = unquote(tok)
    if not t or t in MISSING_TOKENS:
        return None
    try:
        v = float(t)
    except ValueError:
        raise ParseError(path, lineno, f"{name} {t.decode('utf-8', 'replace')!r} is not a number",
                         column=col, column_name=name) from None
    if not math.isfinite(v):
        raise ParseError(path, lineno, f"{name} {t.decode()!r} is not finite", column=col, column_name=name)
    if abs(v) > FLOAT32_MAX:
        raise ParseError(path, lineno, f"{name} {t.decode()!r} is beyond the float32 range the store keeps "
                         f"(|value| <= {FLOAT32_MAX:.3g})", column=col, column_name=name)
    return v


def _parse_fold(path, lineno, col, tok: bytes) -> int:
    t = unquote(tok)
    try:
        v = int(t)
    except ValueError:
        shown = t.decode("utf-8", "replace") if t else "empty"
        raise ParseError(path, lineno, f"fold {shown!r} is not an integer 1..K",
                         column=col, column_name="fold") from None
    if not 1 <= v <= MAX_FOLDS:
        raise ParseError(path, lineno, f"fold {v} is outside 1..K (K must be {MIN_FOLDS}..{MAX_FOLDS})",
                         column=col, column_name="fold")
    return v


class TextSource:
    """A text file (input format of docs/method.md, Data) as a source of ``SampleBlock``s, validated as it is
    read: the header when opened, every row as ``blocks`` parses it.  Counts what it
    handled (NA cells, dropped rows, constant SNPs) for the summary and the attributes."""

    def __init__(self, path: Path, *, strict=False, drop_missing_phenotype=False, progress=True):
        from tqdm import tqdm

        self.path, self.strict, self.drop_missing_phenotype = Path(path), strict, drop_missing_phenotype
        self.size = self.path.stat().st_size
        self.bar = tqdm(total=self.size, unit="B", unit_scale=True, desc=f"ingest {self.path.name}",
                        disable=not progress, file=sys.stderr, leave=False)
        try:
            self.reader, self.tap = open_text(self.path, self.bar)
            self.lines = numbered_lines(self.reader, self.path)
            header = next(self.lines, (1, b""))[1]
            if not header:
                raise ParseError(self.path, 1, "file is empty (expected a header row)")
            if not header.strip():
                raise ParseError(self.path, 1, "line 1 is blank; the header must be the first line")
            self.id_column, self.snps = _parse_header(self.path, header)
        except BaseException:
            self.close()
            raise
        self.na_cells = self.dropped = 0
        self.constant: list = []

    def close(self) -> None:
        self.bar.close()
        if getattr(self, "reader", None) is not None:
            self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def blocks(self, rows: int = 1024):
        """SampleBlocks of up to ``rows`` parsed rows; every problem is a ParseError naming
        the file, line and column."""
        path, snps, n = self.path, self.snps, len(self.snps)
        lead = 3 if self.id_column else 2  # leading columns before the first SNP
        col_min = np.full(n, 127, dtype=np.int8)
        col_max = np.full(n, -128, dtype=np.int8)
        buf = np.empty((rows, n), dtype=np.int8)
        ids, phen, folds = [], [], []
        lineno, kept = 1, 0
        for lineno, parts in split_rows(self.lines, path, lead, n + lead):
            codes, na = parse_genotypes(path, lineno, parts[lead], snps, lead, self.strict)
            self.na_cells += na
            fold = _parse_fold(path, lineno, lead - 1, parts[lead - 2])
            y = _parse_float(path, lineno, lead, "phenotype", parts[lead - 1])
            if y is None:
                if not self.drop_missing_phenotype:
                    raise ParseError(path, lineno, "phenotype is missing (use --drop-missing-phenotype "
                                     "to drop such rows)", column=lead, column_name="phenotype")
                self.dropped += 1
                continue
            if self.id_column:
                ids.append(sample_id(path, lineno, parts[0]))
            else:
                ids.append(str(lineno - 1))
            phen.append(y)
            folds.append(fold)
            np.minimum(col_min, codes, out=col_min)
            np.maximum(col_max, codes, out=col_max)
            buf[len(ids) - 1] = codes
            if len(ids) == rows:
                kept += len(ids)
                yield SampleBlock(ids, np.asarray(phen), np.asarray(folds, np.int8), buf.copy())
                ids, phen, folds = [], [], []
        if ids:
            kept += len(ids)
            yield SampleBlock(ids, np.asarray(phen), np.asarray(folds, np.int8), buf[:len(ids)].copy())
        if not kept:
            raise ParseError(path, lineno, "no data rows after the header"
                             + (f" ({self.dropped} dropped for a missing phenotype)" if self.dropped else ""))
        self.constant = [snps[j] for j in np.flatnonzero(col_min == col_max)]
        if self.constant:
            shown = ", ".join(self.constant[:5]) + (", ..." if len(self.constant) > 5 else "")
            logger.warning(f"{len(self.constant)} SNP column(s) are constant (kept; they carry no information): "
                           f"{shown}")

    def attrs(self) -> dict:
        """The store attributes that describe this source (once every block has been read)."""
        return {"source": {"path": str(self.path.resolve()), "name": self.path.name,
                           "sha256": self.tap.sha.hexdigest(), "bytes": self.size},
                "na_cells_read_as_missing": self.na_cells, "dropped_missing_phenotype": self.dropped,
                "constant_snps": len(self.constant)}


def ingest_tsv(path, out, *, force=False, strict=False, drop_missing_phenotype=False,
               chunk_rows=None, progress=True, groups=None) -> IngestReport:
    """Validate a text file (docs/method.md, Data) and write it as a store at ``out``; ``groups``
    (a Series: sample id -> group, see pheno.read_groups) is stored as sample_group."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise InputError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    check_output_path(path, out, force=force)
    t0 = time.perf_counter()
    with TextSource(path, strict=strict, drop_missing_phenotype=drop_missing_phenotype,
                    progress=progress) as source:
        rows = chunk_rows or default_chunk_rows(len(source.snps))
        lookup = None
        if groups is not None:

            lookup = group_lookup(groups, str(path))
        w = write_store(out, source.snps, source.blocks(rows), attrs=source.attrs, where=str(path), force=force,
                        chunk_rows=chunk_rows, groups=lookup)
    return IngestReport(
        store=str(out), source=str(path), n_samples=w.n_samples, n_variants=w.n_variants, n_folds=w.n_folds,
        fold_sizes={i + 1: int(x) for i, x in enumerate(w.fold_sizes)}, missing_rate=w.missing_rate,
        phenotype_mean=w.phenotype_mean, phenotype_sd=w.phenotype_sd, na_cells=source.na_cells,
        dropped_missing_phenotype=source.dropped, constant_snps=source.constant,
        parsed_positions=w.parsed_positions, chunk_rows=w.chunk_rows, bytes_read=source.size,
        id_column=source.id_column, seconds=time.perf_counter() - t0,
        extra=[] if groups is None else [f"groups       {groups.name!r} stored per sample (within-group accuracy)"])
