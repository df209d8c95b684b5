"""The Zarr store layout: names, dtypes, dims, format version; open and check.

Every array of a store is declared here, once (as sgkit does).  Writers
(``ingest``) create a store under a temporary name and rename it when
complete; readers call ``open_store`` which refuses anything that is not a
complete store of a format version it understands.  This module must not
import TensorFlow.
"""

from __future__ import annotations

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
    return Store(path=path, attrs=attrs, genotypes=group["call_dosage"],
                 sample_id=_strings(group["sample_id"]),
                 phenotype=np.asarray(group["sample_phenotype"][:], dtype=np.float32),
                 fold=np.asarray(group["sample_fold"][:], dtype=np.int64),
                 variant_id=_strings(group["variant_id"]),
                 contig=_strings(group["variant_contig"]),
                 position=np.asarray(group["variant_position"][:], dtype=np.int64))
