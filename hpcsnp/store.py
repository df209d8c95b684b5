"""The Zarr store layout: names, dtypes, dims, format version; open and check.

Every array of a store is declared here, once (as sgkit does).  Writers
(``ingest``) create a store under a temporary name and rename it when
complete; readers call ``open_store`` which refuses anything that is not a
complete store of a format version it understands.  This module must not
import TensorFlow.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcsnp.errors import StoreError

FORMAT_VERSION = 1
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
}

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


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def is_hpcsnp_store(path) -> bool:
    """A directory whose group metadata carries the hpcsnp format key (complete or not):
    the only kind of directory ``ingest --force`` may replace."""
    meta = Path(path) / "zarr.json"
    if not Path(path).is_dir() or not meta.is_file():
        return False
    import json

    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(attrs, dict) and FORMAT_KEY in attrs


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
        pid = p.name[len(path.name) + 5:].split("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if p.is_dir() and (is_hpcsnp_store(p) or p.name.endswith("-variants")):
            found.append(p)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path, warn) -> None:
    """Delete what a killed ingest of ``path`` left behind, saying so."""
    for p in stale_temporaries(path):
        shutil.rmtree(p, ignore_errors=True)
        warn(f"removed {p}, left by an ingest that was killed before it finished")


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = tmp_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an old one is removed first."""
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


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
    import json

    try:
        attrs = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return store_id_of(attrs) if isinstance(attrs, dict) and FORMAT_KEY in attrs else None


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
        """Identity of this write of the store (see ``store_id_of``)."""
        return store_id_of(self.attrs)

    @property
    def name(self) -> str:
        """Default data-set name in a run: the store's file name without .zarr."""
        name = self.path.name
        return name[:-5] if name.endswith(".zarr") else name

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
    names = ARRAYS if attrs.get(EVERY_CHUNK_KEY) else ("call_dosage",)
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


def open_store(path) -> Store:
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
    if version != FORMAT_VERSION:
        raise StoreError(f"{path}: store format version {version}, this hpcsnp reads "
                         f"version {FORMAT_VERSION}; re-run `hpcsnp ingest`")
    if not attrs.get(COMPLETE_KEY):
        raise StoreError(f"{path}: store is incomplete (an ingest was interrupted); "
                         "re-run `hpcsnp ingest --force`")
    missing = [name for name in ARRAYS if name not in group]
    if missing:
        raise StoreError(f"{path}: store lacks arrays {', '.join(missing)}")
    _check_chunks(path, group, attrs)
    return Store(path=path, attrs=attrs, genotypes=group["call_dosage"],
                 sample_id=_strings(group["sample_id"]),
                 phenotype=np.asarray(group["sample_phenotype"][:], dtype=np.float32),
                 fold=np.asarray(group["sample_fold"][:], dtype=np.int64),
                 variant_id=_strings(group["variant_id"]),
                 contig=_strings(group["variant_contig"]),
                 position=np.asarray(group["variant_position"][:], dtype=np.int64))
