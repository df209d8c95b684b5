"""Peak RSS of a whole `hpcsnp train` process does not grow with the number of samples.

Slow (a minute or two): run with `python -m pytest -m slow`.  The precise,
fast counterpart is test_data.py::test_streaming_memory_does_not_grow_with_samples.
"""

import json

import pytest
from helpers import run_cli

from hpcsnp.io.simulate import simulate_store

pytestmark = pytest.mark.slow


def peak_rss(store, run, cache):
    run_cli("train", store, "--fold", 1, "--run", run, "--epochs", 1, "--batch-size", 64,
            "--cache", cache, "--threads", 1)
    name = store.name[:-5]
    return json.loads((run / name / "fold_1" / "metrics.json").read_text())["peak_rss_mb"]


def test_train_peak_rss_is_flat_in_samples(tmp_path):
    snps = 2000
    sizes = (2_000, 80_000)
    for n in sizes:
        simulate_store(tmp_path / f"s{n}.zarr", samples=n, snps=snps, folds=5)
    streamed = {n: peak_rss(tmp_path / f"s{n}.zarr", tmp_path / f"stream{n}", "never") for n in sizes}
    data_mb = (sizes[1] - sizes[0]) * snps / 2**20  # 149 MiB more int8 genotypes
    growth = streamed[sizes[1]] - streamed[sizes[0]]
    # Measured here: +25..50 MB from 2k to 40k samples (run-to-run noise of a TensorFlow
    # process is ~30 MB; Python/NumPy allocations are flat, see test_data.py), while a
    # pipeline holding the genotypes grows by at least data_mb.
    assert growth < 0.5 * data_mb, (streamed, data_mb)
