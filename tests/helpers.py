"""Helpers the tests share (imported as ``from helpers import ...``; fixtures are in conftest)."""

import os
import subprocess
import sys
from pathlib import Path

from hpcsnp.config import Config

FAST = Config(max_epochs=3, batch_size=16, patience=2, dropout=0.5, learning_rate=3e-3, n_models=1)  # a short training
SMALL_REAL = Path(__file__).resolve().parent / "data" / "height_qa_small.tsv.gz"  # shipped: see data/README.md


def run_cli(*args, check=True, env=None, cwd=None):
    """Run the installed CLI as a user would: a subprocess, stdout and stderr apart."""
    proc = subprocess.run([sys.executable, "-m", "hpcsnp", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcsnp {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def scalable_design(store, encoding):
    """The scalable solver's design of a store (dosage: missing calls filled with the SNP means)."""
    import numpy as np

    from hpcsnp.linear import scalable

    design = scalable.Design(store, encoding, np.zeros(store.n_variants))
    if encoding == "dosage":
        design.fill = scalable.design_fill(store, design)
    return design


def fold_masks(n, fit, inner):
    """The scalable solver's masks [n, 2] of a fold's fit (``fit`` rows) and its inner fit
    (``fit[inner[0]]``)."""
    import numpy as np

    masks = np.zeros((n, 2))
    masks[fit, 0] = 1
    masks[fit[inner[0]], 1] = 1
    return masks


def write_tsv(path: Path, text: str, gz=False):
    import gzip

    data = text.encode()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_container_runtime(path: Path, record: Path) -> Path:
    """A stand-in for apptainer: records its arguments in ``record`` (a line a call), checks
    they are `exec [--bind DIRS] IMAGE CMD...` and runs CMD."""
    path.write_text(f'#!/bin/sh\necho "$@" >> {record}\n'
                    '[ "$1" = exec ] || exit 9\nshift; [ "$1" = --bind ] && shift 2\nshift\nexec "$@"\n')
    path.chmod(0o755)
    return path


def family_store(directory, name, effects, *, n_fam=40, per=15, p=1500, seed=4):
    """Inbred-like lines in ``n_fam`` families (a parent's codes +- 1 per line), 300 SNPs per
    chromosome, a trait from ``effects(rng, p)`` (marker effects) with h2 0.5, three folds;
    written as TSV and ingested.  Returns (store path, genotypes, phenotypes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    parents = rng.integers(0, 3, (n_fam, p))
    g = np.clip(parents[np.repeat(np.arange(n_fam), per)] + rng.integers(-1, 2, (n_fam * per, p)), 0, 2)
    beta = effects(rng, p)
    gv = (g - g.mean(0)) @ beta
    y = 10 + gv / gv.std() + rng.normal(0, 1, n_fam * per)
    lines = ["sample\tfold\tphenotype\t" + "\t".join(f"Chr{1 + j // 300:02d}_{1000 * (j + 1)}" for j in range(p))]
    lines += [f"L{i}\t{i % 3 + 1}\t{y[i]:.5f}\t" + "\t".join(map(str, g[i])) for i in range(len(y))]
    (Path(directory) / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    run_cli("ingest", Path(directory) / f"{name}.tsv", "-o", Path(directory) / f"{name}.zarr")
    return Path(directory) / f"{name}.zarr", g, y
