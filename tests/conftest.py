import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SMALL_REAL = Path(__file__).resolve().parent / "data" / "height_qa_small.tsv.gz"  # shipped: see data/README.md


def run_cli(*args, check=True, env=None, cwd=None):
    """Run the installed CLI as a user would: a subprocess, stdout and stderr apart."""
    proc = subprocess.run([sys.executable, "-m", "hpcsnp", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpcsnp {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def write_tsv(path: Path, text: str, gz=False):
    import gzip

    data = text.encode()
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def tsv(tmp_path):
    """Write a small TSV from a string; returns its path."""
    counter = {"n": 0}

    def make(text, name=None, gz=False):
        counter["n"] += 1
        return write_tsv(tmp_path / (name or f"data{counter['n']}.tsv"), text, gz=gz)
    return make


@pytest.fixture(scope="session")
def sim_store(tmp_path_factory):
    """A small simulated store (through the public simulator and the TSV ingest)."""
    from hpcsnp.ingest import ingest_tsv
    from hpcsnp.simulate import simulate

    d = tmp_path_factory.mktemp("sim")
    truth = simulate(d / "sim.tsv", samples=240, snps=60, causal=3, folds=3, missing=0.05, seed=1)
    ingest_tsv(d / "sim.tsv", d / "sim.zarr", progress=False, chunk_rows=64)
    return d / "sim.zarr", truth
