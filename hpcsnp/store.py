"""The Zarr store layout: names, dtypes, dims, format version; open and check.

Every array of a store is declared here, once (as sgkit does).  Writers
(``ingest``) create a store under a temporary name and rename it when
complete; readers call ``open_store`` which refuses anything that is not a
complete store of a format version it understands.  This module must not
import TensorFlow.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcsnp.atomic import pid_alive, tmp_name, tmp_pid
from hpcsnp.config import MAX_FOLDS, MIN_FOLDS
from hpcsnp.errors import InputError, StoreError
from hpcsnp.resources import provenance

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: variant_allele added; version-1 stores are still read (alleles unknown)
READABLE_VERSIONS = (1, 2)
FORMAT_KEY = "hpcsnp_format_version"
COMPLETE_KEY = "hpcsnp_complete"
EVERY_CHUNK_KEY = "hpcsnp_every_chunk_written"  # chunks equal to the fill value are on disk too
STORE_ID_KEY = "hpcsnp_store_id"  # a fresh random id per write: folds record it, reruns and reduce check it

# name -> (dims, dtype, meaning).  Genotypes are samples x variants so that a
# training batch (a few rows) is a contiguous read of one chunk.
ARRAYS = {
    "call_dosage": (("samples", "variants"), "int8",
                    "genotype code: 0 AA, 1 Aa, 2 aa (ALT allele count), -1 missing"),
    "sample_id": (("samples",), "str", "sample identifier"),
    "sample_phenotype": (("samples",), "float32", "phenotype as given in the input"),
    "sample_fold": (("samples",), "int8", "cross-validation fold, 1..K"),
    "variant_id": (("variants",), "str", "marker name"),
    "variant_contig": (("variants",), "str", "chromosome parsed from the name ('' if it did not parse)"),
    "variant_position": (("variants",), "int64", "position parsed from the name (-1 if it did not parse)"),
    "variant_allele": (("variants", "alleles"), "str",
                       "REF and ALT allele (ALT is the allele call_dosage counts); '' where unknown (text input)"),
}
ADDED_IN = {"variant_allele": 2}  # arrays a store of an older format version lacks
OPTIONAL = {"sample_group": (("samples",), "str", "group of the sample (e.g. its bi-parental family), for "
                                                 "within-group accuracy; '' where unknown")}


def arrays_of(version: int) -> list[str]:
    """The arrays a store of this format version holds.

    >>> "variant_allele" in arrays_of(1), "variant_allele" in arrays_of(2)
    (False, True)
    """
    return [name for name in ARRAYS if ADDED_IN.get(name, 1) <= version]

_NAME_RE = re.compile(r"^(?P<chrom>[A-Za-z]*\d+|[A-Za-z]*[XYWZ]|[A-Za-z]*MT?)[_:](?P<pos>\d+)$")


def parse_marker_name(name: str) -> tuple[str, int]:
    """Chromosome and position from names like ``Gm12_2894203`` or ``chr1:500``.

    >>> parse_marker_name("Gm12_2894203")
    ('Gm12', 2894203)
    >>> parse_marker_name("rs12345")
    ('', -1)
    """
    m = _NAME_RE.match(name)
    if not m:
        return "", -1
    return m.group("chrom"), int(m.group("pos"))


def default_chunk_rows(n_variants: int, target_bytes: int = 1 << 20) -> int:
    """Rows per genotype chunk: about 1 MiB of int8, at least 64 rows."""
    return int(max(64, min(1024, target_bytes // max(1, n_variants))))


def _hpcsnp_attrs(path) -> dict | None:
    """The group attributes of the hpcsnp store (complete or not) at ``path``, read from its
    metadata alone; None when there is no readable hpcsnp store there."""
    import json

    try:
        attrs = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) and FORMAT_KEY in attrs else None


def is_hpcsnp_store(path) -> bool:
    """A directory holding an hpcsnp store (complete or not): the only kind of directory
    ``ingest --force`` may replace."""
    return Path(path).is_dir() and _hpcsnp_attrs(path) is not None


def check_replaceable(path, *, force: bool, what: str = "store") -> None:
    """Refuse to write over ``path`` unless it is absent, or ``force`` and an hpcsnp store."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        raise StoreError(f"{path} already exists; use --force to overwrite it")
    if not is_hpcsnp_store(path) or path.is_symlink():
        kind = "a file" if path.is_file() else "a link" if path.is_symlink() else "a directory"
        raise StoreError(f"{path} is {kind} that is not an hpcsnp {what}; --force only replaces an hpcsnp "
                         "store: choose another -o or remove it yourself")


def stale_temporaries(path) -> list[Path]:
    """Temporary stores left next to ``path`` by an ingest that was killed: ``NAME.tmp-PID``
    (and ``NAME.tmp-PID-variants``) whose process is gone."""
    path = Path(path)
    found = []
    for p in path.parent.glob(f"{glob.escape(path.name)}.tmp-*"):
        pid = tmp_pid(p, path)
        if pid is None or pid_alive(pid):
            continue
        if p.is_dir() and (is_hpcsnp_store(p) or p.name.endswith("-variants")):
            found.append(p)
    return sorted(found)


def remove_stale_temporaries(path) -> None:
    """Delete what a killed ingest of ``path`` left behind, saying so."""
    for p in stale_temporaries(path):
        shutil.rmtree(p, ignore_errors=True)
        logger.warning(f"removed {p}, left by an ingest that was killed before it finished")


def store_id_of(attrs: dict) -> str:
    """Identity of one write of a store: a new random id each ingest (older stores: a hash
    of their attributes, which include the source file's checksum)."""
    sid = attrs.get(STORE_ID_KEY)
    if sid:
        return str(sid)
    import hashlib
    import json

    return "attrs-" + hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()[:24]


def peek_store_id(path) -> str | None:
    """The store id of the store at ``path`` from its metadata alone, None when there is no
    readable hpcsnp store there."""
    attrs = _hpcsnp_attrs(path)
    return None if attrs is None else store_id_of(attrs)


@dataclass
class Store:
    """An open, checked store.  Small per-sample and per-variant arrays are
    loaded eagerly; ``genotypes`` stays on disk and is read by chunks."""

    path: Path
    attrs: dict
    genotypes: object  # zarr.Array, samples x variants, int8
    sample_id: np.ndarray
    phenotype: np.ndarray
    fold: np.ndarray
    variant_id: np.ndarray
    contig: np.ndarray
    position: np.ndarray
    alleles: np.ndarray | None = None  # [variants, 2] REF, ALT; None when no allele is known
    groups: np.ndarray | None = None  # per sample, e.g. the family; None when the store has none
    # a trait of a phenotype table in place of the store's own phenotype (hpcsnp/traits.py): its
    # name, the table's path and a hash of its values; lines without a value are in fold 0
    trait: str | None = None
    trait_source: str | None = None
    trait_key: str | None = None
    # fixed effects of a covariate table (hpcsnp/traits.py): [lines, columns] (NaN: no value,
    # those lines are in fold 0), the columns' names, the table's path and a hash of the values
    covariates: np.ndarray | None = None
    covariate_names: list | None = None
    covariate_source: str | None = None
    covariate_key: str | None = None
    covariate_columns: list | None = None  # the table's columns asked for (None: all)

    @property
    def n_samples(self) -> int:
        return int(self.genotypes.shape[0])

    @property
    def n_variants(self) -> int:
        return int(self.genotypes.shape[1])

    @property
    def n_folds(self) -> int:
        return int(self.attrs["n_folds"])

    @property
    def chunk_rows(self) -> int:
        return int(self.genotypes.chunks[0])

    @property
    def store_id(self) -> str:
        """Identity of this write of the store (see ``store_id_of``); with a trait of a
        phenotype table, that of the store followed by the trait and its values' hash."""
        sid = store_id_of(self.attrs)
        sid = sid if self.trait_key is None else f"{sid}+{self.trait}@{self.trait_key}"
        return sid if self.covariate_key is None else f"{sid}+covariates@{self.covariate_key}"

    @property
    def phenotyped(self) -> np.ndarray:
        """The rows with a phenotype (every row, unless a trait of a table lacks some)."""
        return np.flatnonzero(self.fold > 0)

    @property
    def name(self) -> str:
        """Default data-set name in a run: the store's file name without .zarr, then
        ``.<trait>`` for a trait of a phenotype table."""
        from hpcsnp.traits import default_dataset_name

        return default_dataset_name(self.path, self.trait)

    def variants_frame(self):
        import pandas as pd

        return pd.DataFrame({"snp": self.variant_id, "chrom": self.contig,
                             "pos": self.position})


def _strings(arr) -> np.ndarray:
    """A zarr string array as a NumPy array of Python str (object dtype)."""
    return np.asarray(arr[:].tolist(), dtype=object)


def _check_chunks(path: Path, group, attrs: dict) -> None:
    """Every chunk is on disk: a missing chunk would read as fill values (missing genotypes,
    zero phenotypes), not as data.  Stores written before every chunk was written (even one
    equal to the fill value) are checked for genotype chunks only: a whole chunk of samples
    with every call missing does not occur in real data."""
    names = arrays_of(attrs[FORMAT_KEY]) if attrs.get(EVERY_CHUNK_KEY) else ("call_dosage",)
    for name in names:
        arr = group[name]
        try:
            have, want = arr.nchunks_initialized, arr.nchunks
        except Exception as e:  # noqa: BLE001 - unreadable chunk listing: report it as damage
            raise StoreError(f"{path}: cannot list the chunks of {name} ({e})") from None
        if arr.size and have < want:
            raise StoreError(f"{path}: {want - have} of {want} chunk(s) of {name} are missing (deleted or "
                             "never written); the store is damaged: re-run `hpcsnp ingest --force`")


def read_genotype_rows(store: "Store", lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 of the genotype matrix; a chunk that cannot be decoded is a StoreError
    naming it (a corrupt file is a user's problem to fix, not an internal error)."""
    try:
        return store.genotypes[lo:hi]
    except Exception as e:  # noqa: BLE001 - zarr/numcodecs raise many types for corrupt data
        c0, c1 = lo // store.chunk_rows, (hi - 1) // store.chunk_rows
        which = f"chunk {c0}" if c0 == c1 else f"chunks {c0}-{c1}"
        raise StoreError(f"{store.path}: genotype {which} (samples {lo + 1}-{hi}) cannot be read: "
                         f"{type(e).__name__}: {e}; the store is damaged: re-run `hpcsnp ingest --force`") from None


def row_chunks(store: "Store"):
    """(first row, end row, int8 genotypes) of every chunk of rows, in order."""
    for lo in range(0, store.n_samples, store.chunk_rows):
        hi = min(lo + store.chunk_rows, store.n_samples)
        yield lo, hi, read_genotype_rows(store, lo, hi)


def open_store(path, *, trait: str | None = None, pheno=None, covar=None, covar_names=()) -> Store:
    """The store at ``path``, checked; with ``pheno`` (a phenotype table) and ``trait`` (one of
    its columns), that trait in place of the store's phenotype; with ``covar`` (a covariate
    table), its columns ``covar_names`` [all] as fixed effects (hpcsnp/traits.py)."""
    store = _open_store(path)
    if trait is None and pheno is None and covar is None:
        return store
    from hpcsnp.traits import select_covariates, select_trait

    store = select_trait(store, trait, pheno)
    return store if covar is None else select_covariates(store, covar, covar_names or ())


def _open_store(path) -> Store:
    import zarr

    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store (create one with `hpcsnp ingest DATA.tsv -o {path}`)")
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception as e:  # zarr raises several types for "not a group"
        raise StoreError(f"{path}: not a Zarr store ({e})") from None
    attrs = dict(group.attrs)
    version = attrs.get(FORMAT_KEY)
    if version is None:
        raise StoreError(f"{path}: not an hpcsnp store (no {FORMAT_KEY} attribute)")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise StoreError(f"{path}: store format version {version}, this hpcsnp reads "
                         f"version {readable}; re-run `hpcsnp ingest` (or use the hpcsnp that wrote it)")
    if not attrs.get(COMPLETE_KEY):
        raise StoreError(f"{path}: store is incomplete (an ingest was interrupted); "
                         "re-run `hpcsnp ingest --force`")
    missing = [name for name in arrays_of(version) if name not in group]
    if missing:
        raise StoreError(f"{path}: store lacks arrays {', '.join(missing)}")
    _check_chunks(path, group, attrs)
    return Store(path=path, attrs=attrs, genotypes=group["call_dosage"],
                 sample_id=_strings(group["sample_id"]),
                 phenotype=np.asarray(group["sample_phenotype"][:], dtype=np.float32),
                 fold=np.asarray(group["sample_fold"][:], dtype=np.int64),
                 variant_id=_strings(group["variant_id"]),
                 contig=_strings(group["variant_contig"]),
                 position=np.asarray(group["variant_position"][:], dtype=np.int64),
                 alleles=_alleles(group) if version >= ADDED_IN["variant_allele"] else None,
                 groups=_strings(group["sample_group"]) if "sample_group" in group else None)


def _alleles(group) -> np.ndarray | None:
    """REF/ALT per variant, or None when the store knows none (a text ingest)."""
    a = np.asarray(group["variant_allele"][:].tolist(), dtype=object).reshape(-1, 2)
    return a if (a != "").any() else None


# --- the fold rules -------------------------------------------------------------------



def check_k(k: int, what: str = "folds") -> int:
    """K-fold CV needs K = 3..10 folds.

    >>> check_k(5)
    5
    """
    if not MIN_FOLDS <= k <= MAX_FOLDS:
        raise StoreError(f"{what} must be {MIN_FOLDS}..{MAX_FOLDS}, got {k}")
    return k


def check_folds(fold, where: str) -> tuple[int, np.ndarray]:
    """K and the size of each fold 1..K; refuses folds outside 1..K, K outside 3..10 and a
    fold with no samples (``where`` names the input in the message).

    >>> check_folds([1, 2, 3, 1], "x")
    (3, array([2, 1, 1]))
    """
    fold = np.asarray(fold, dtype=np.int64)
    if len(fold) == 0 or fold.min() < 1:
        raise StoreError(f"{where}: folds must be integers 1..K")
    k = int(fold.max())
    if k < MIN_FOLDS or k > MAX_FOLDS:
        raise StoreError(f"{where}: folds go up to {k}; K-fold CV needs K = {MIN_FOLDS}..{MAX_FOLDS} folds")
    sizes = np.bincount(fold, minlength=k + 1)[1:]
    empty = [str(i + 1) for i, s in enumerate(sizes) if s == 0]
    if empty:
        raise StoreError(f"{where}: fold(s) {', '.join(empty)} have no samples; folds must be 1..{k} "
                         "with every fold used")
    return k, sizes


# --- writing a store ------------------------------------------------------------------

# every chunk is written, even one equal to the fill value (zarr skips those by default),
# so that a chunk missing on disk is damage, never data
EVERY_CHUNK = {"write_empty_chunks": True}




FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_phenotype_float32(sample_id, phenotype) -> np.ndarray:
    """The phenotype as stored (float32); a value that is not finite there (|y| above
    3.4e38, or nan/inf) is an error naming the sample."""
    y64 = np.asarray(phenotype, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        y = y64.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"phenotype of sample {sample_id[i]!r} ({y64[i]:.6g}) is not a finite float32 "
                         f"number (|value| must be below {FLOAT32_MAX:.3g}); {len(bad)} such value(s)")
    return y


class StoreWriter:
    """Creates a store under a temporary name; ``finish`` renames it into place.

    Genotype rows are appended one chunk at a time; the small per-sample
    arrays are written at the end.  Used by every ingest path and by the
    simulator, so all stores share one layout.
    """

    def __init__(self, path, variant_ids, *, force=False, chunk_rows=None, contigs=None,
                 positions=None, alleles=None):
        import zarr
        from zarr.codecs import BloscCodec

        self.path = Path(path)
        check_replaceable(self.path, force=force)
        remove_stale_temporaries(self.path)
        self.tmp = tmp_name(self.path)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.store_id = uuid.uuid4().hex
        n = len(variant_ids)
        self.chunk_rows = chunk_rows or default_chunk_rows(n)
        self.group = zarr.open_group(str(self.tmp), mode="w")
        self.group.attrs.update({FORMAT_KEY: FORMAT_VERSION, COMPLETE_KEY: False, EVERY_CHUNK_KEY: True})
        self.gt = self.group.create_array(
            "call_dosage", shape=(0, n), chunks=(self.chunk_rows, n), dtype="int8",
            fill_value=-1, dimension_names=ARRAYS["call_dosage"][0], config=EVERY_CHUNK,
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"))
        if contigs is None:  # parsed from names like Gm12_2894203 (text input)
            contig_pos = [parse_marker_name(v) for v in variant_ids]
            contigs, positions = [c for c, _ in contig_pos], [p for _, p in contig_pos]
        self._small("variant_id", np.asarray(variant_ids, dtype=object))
        self._small("variant_contig", np.asarray(contigs, dtype=object))
        self._small("variant_position", np.asarray(positions, dtype=np.int64))
        self._small("variant_allele", np.asarray(alleles if alleles is not None else [("", "")] * n,
                                                 dtype=object).reshape(n, 2))
        self.parsed_positions = sum(p >= 0 for p in positions)
        self.buffer = np.empty((self.chunk_rows, n), dtype=np.int8)
        self.fill = 0
        self.n_rows = 0
        self.missing = 0
        # one writer thread compresses and writes chunk k while the caller parses chunk k+1
        # (Blosc and file I/O release the GIL); one chunk in flight keeps the order and the memory
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hpcsnp-store-writer")
        self._pending = None

    def _small(self, name, data):
        dims, dtype, meaning = ARRAYS[name] if name in ARRAYS else OPTIONAL[name]
        if dtype == "str":
            data = np.asarray([str(x) for x in np.ravel(data)], dtype=np.dtypes.StringDType()).reshape(data.shape)
        else:
            data = np.asarray(data, dtype=dtype)
        arr = self.group.create_array(name, shape=data.shape, dtype=data.dtype, dimension_names=dims,
                                      chunks=tuple(max(1, d) for d in data.shape), config=EVERY_CHUNK)
        arr[:] = data
        arr.attrs["description"] = meaning

    def add_row(self, codes: np.ndarray) -> None:
        self.buffer[self.fill] = codes
        self.fill += 1
        if self.fill == self.chunk_rows:
            self.flush()

    def add_block(self, block: np.ndarray) -> None:
        for start in range(0, len(block), self.chunk_rows):
            part = block[start:start + self.chunk_rows]
            if self.fill == 0 and len(part) == self.chunk_rows:
                self._submit(np.array(part, dtype=np.int8))  # a copy: the caller may reuse block
            else:
                for row in part:
                    self.add_row(row)

    def flush(self) -> None:
        if self.fill:
            self._submit(self.buffer[:self.fill])
            self.buffer = np.empty_like(self.buffer)  # the old one is the writer's now
            self.fill = 0

    def drain(self) -> None:
        """Every row added so far is written (``n_rows`` and ``missing`` are final)."""
        self.flush()
        self._wait()

    def _submit(self, block) -> None:
        self._wait()
        self._pending = self._pool.submit(self._append, block)

    def _wait(self) -> None:
        """Wait for the chunk in flight; a failed write raises here, in the caller."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _append(self, block):
        self.gt.append(block, axis=0)
        self.n_rows += len(block)
        self.missing += int(np.count_nonzero(block == -1))

    def finish(self, sample_id, phenotype, fold, attrs: dict, groups=None) -> None:
        """Write the per-sample arrays (``groups``: optional, one string per sample) and the
        attributes (``n_folds`` and ``fold_sizes`` from ``fold``, checked by the fold rules),
        mark the store complete and rename it into place."""
        from hpcsnp import __version__

        self.drain()
        self._pool.shutdown()
        phenotype = check_phenotype_float32(sample_id, phenotype)
        k, sizes = check_folds(fold, str(self.path))
        self._small("sample_id", np.asarray(sample_id, dtype=object))
        self._small("sample_phenotype", phenotype)
        self._small("sample_fold", fold)
        if groups is not None:
            self._small("sample_group", np.asarray(groups, dtype=object))
        n_cells = self.n_rows * self.gt.shape[1]
        self.group.attrs.update({
            **attrs, "n_samples": self.n_rows, "n_variants": int(self.gt.shape[1]),
            "n_folds": k, "fold_sizes": [int(x) for x in sizes],
            "missing_rate": self.missing / n_cells if n_cells else 0.0,
            "hpcsnp_version": __version__, "provenance": provenance(), STORE_ID_KEY: self.store_id,
        })
        self.group.attrs[COMPLETE_KEY] = True  # last write: marks the store usable
        import warnings

        import zarr

        with warnings.catch_warnings():  # zarr calls v3 consolidated metadata experimental
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.tmp))  # so xarray.open_zarr(STORE) needs no flags
        if self.path.exists() or self.path.is_symlink():
            check_replaceable(self.path, force=True)  # still ours: nothing else is ever removed
            old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - we are already failing; the partial store goes anyway
            pass
        finally:  # a second SIGTERM (a BaseException) while waiting must not leave it either
            self._pool.shutdown()
            shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class SampleBlock:
    """Consecutive samples from a source: their ids, phenotypes, folds and int8 genotypes
    [samples, variants] (codes 0/1/2, -1 missing)."""

    ids: list
    phenotype: np.ndarray
    fold: np.ndarray
    genotypes: np.ndarray


@dataclass
class WrittenStore:
    """What ``write_store`` wrote."""

    path: Path
    n_samples: int
    n_variants: int
    n_folds: int
    fold_sizes: np.ndarray
    missing_rate: float
    phenotype_mean: float
    phenotype_sd: float
    chunk_rows: int
    parsed_positions: int


def write_store(out, variant_ids, blocks, *, attrs, where: str, force: bool = False, chunk_rows=None,
                contigs=None, positions=None, alleles=None, groups=None) -> WrittenStore:
    """Write a store from any source: ``blocks`` yields ``SampleBlock``s in sample order
    (the text reader as it parses, the VCF/PLINK reader from its transposed variants, the
    simulator).  Sample ids must be unique, folds follow the fold rules, phenotypes must fit
    float32 (``where`` names the source in those errors).  ``attrs``: the source's own
    attributes, a dict or a callable returning one once every block has been read (a
    checksum of the input, counts).  ``groups``: None, or a callable mapping the sample ids
    to one group string each.  Written under a temporary name, renamed when complete;
    nothing is left behind on an error."""
    writer = StoreWriter(out, variant_ids, force=force, chunk_rows=chunk_rows, contigs=contigs,
                         positions=positions, alleles=alleles)
    ids, phen, folds = [], [], []
    try:
        for block in blocks:
            writer.add_block(block.genotypes)
            ids += list(block.ids)
            phen.append(np.asarray(block.phenotype, dtype=np.float64))
            folds.append(np.asarray(block.fold, dtype=np.int8))
        dup = first_duplicate(ids)
        if dup is not None:
            raise InputError(f"{where}: sample id {dup!r} occurs more than once")
        y = np.concatenate(phen) if phen else np.zeros(0)
        fold = np.concatenate(folds) if folds else np.zeros(0, np.int8)
        k, sizes = check_folds(fold, where)
        if len(y) and float(y.std()) == 0.0:
            logger.warning("the phenotype is the same for every sample")
        mean, sd = float(y.mean()), float(y.std(ddof=1)) if len(y) > 1 else 0.0
        writer.drain()
        n_cells = writer.n_rows * len(variant_ids)
        missing = writer.missing / n_cells if n_cells else 0.0
        extra = attrs() if callable(attrs) else attrs
        writer.finish(ids, y, fold, {**extra, "phenotype_mean": mean, "phenotype_sd": sd},
                      groups=None if groups is None else groups(ids))
    except BaseException:
        writer.abort()
        raise
    return WrittenStore(Path(out), len(ids), len(variant_ids), k, sizes, missing, mean, sd, writer.chunk_rows,
                        writer.parsed_positions)


def first_duplicate(items):
    """The first item seen twice, or None.

    >>> first_duplicate(["a", "b", "a"]), first_duplicate([1, 2])
    ('a', None)
    """
    seen = set()
    for x in items:
        if x in seen:
            return x
        seen.add(x)
    return None
