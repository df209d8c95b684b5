import os

import pytest
from helpers import FAST, write_tsv

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    from hpcsnp.io.simulate import simulate
    from hpcsnp.io.text import ingest_tsv

    d = tmp_path_factory.mktemp("sim")
    truth = simulate(d / "sim.tsv", samples=240, snps=60, causal=3, folds=3, missing=0.05, seed=1)
    ingest_tsv(d / "sim.tsv", d / "sim.zarr", progress=False, chunk_rows=64)
    return d / "sim.zarr", truth


@pytest.fixture(scope="module")
def run(sim_store, tmp_path_factory):
    """All three folds of the simulated store, trained in this process."""
    from hpcsnp.cnn.train import train_fold

    path, _ = sim_store
    run = tmp_path_factory.mktemp("run")
    results = [train_fold(path, i, run, FAST) for i in (1, 2, 3)]
    return run, results
