"""Input pipeline: the one-hot table, the fold rotation, streaming and shuffling."""

import tracemalloc

import numpy as np
import pytest

from hpcsnp.cnn.data import RowSource, one_hot, should_cache
from hpcsnp.config import Config
from hpcsnp.errors import InputError
from hpcsnp.folds import fold_split, validation_fold
from hpcsnp.io.simulate import simulate_store
from hpcsnp.store import open_store


def test_one_hot_table_is_the_published_one():
    codes = np.array([[0, 1, 2, -1]], dtype=np.int8)
    x = one_hot(codes).numpy()
    assert x.shape == (1, 4, 4) and x.dtype == np.float32
    assert x[0].tolist() == [[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]


@pytest.mark.parametrize("k", [3, 5, 10])
def test_fold_rotation(k):
    folds = np.repeat(np.arange(1, k + 1), 4)
    seen_test, seen_val = [], []
    for i in range(1, k + 1):
        sp = fold_split(folds, k, i)
        assert sp.val_fold == (i + 1 if i < k else 1) == validation_fold(i, k)
        assert set(folds[sp.test]) == {i} and set(folds[sp.val]) == {sp.val_fold}
        assert set(folds[sp.train]) == set(range(1, k + 1)) - {i, sp.val_fold}
        assert len(sp.train) + len(sp.val) + len(sp.test) == len(folds)
        seen_test.append(i)
        seen_val.append(sp.val_fold)
    assert sorted(seen_test) == sorted(seen_val) == list(range(1, k + 1))
    with pytest.raises(InputError, match="outside 1..3"):
        fold_split(np.array([1, 2, 3]), 3, 4)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("d") / "s.zarr"
    simulate_store(p, samples=1000, snps=50, folds=5, chunk_rows=64, missing=0.1)
    return open_store(p)


@pytest.mark.parametrize("cache", [False, True])
def test_each_row_once_per_epoch_with_its_target(store, cache):
    sp = fold_split(store.fold, 5, 2)
    target = store.phenotype[sp.train] * 3
    src = RowSource(store, sp.train, target, cache=cache, window_chunks=3)
    full = store.genotypes[:]
    rows = []
    for g, y, r in src.batches(16, shuffle=True, seed=1, epoch=1):
        assert len(r) <= 16
        np.testing.assert_array_equal(g, full[r])
        np.testing.assert_allclose(y, store.phenotype[r] * 3)
        rows.extend(r.tolist())
    assert sorted(rows) == sp.train.tolist()


@pytest.mark.parametrize("cache", [False, True])
def test_shuffle_is_seeded_and_differs_between_epochs(store, cache):
    sp = fold_split(store.fold, 5, 1)
    src = RowSource(store, sp.train, store.phenotype[sp.train], cache=cache)

    def order(epoch, seed=0):
        return np.concatenate([r for _, _, r in src.batches(8, shuffle=True, seed=seed, epoch=epoch)])
    assert order(1).tolist() == order(1).tolist()
    assert order(1).tolist() != order(2).tolist()
    assert order(1).tolist() != order(1, seed=5).tolist()
    plain = np.concatenate([r for _, _, r in src.batches(8, shuffle=False)])
    assert plain.tolist() == sp.train.tolist()


def test_dataset_gives_one_hot_batches(store):
    sp = fold_split(store.fold, 5, 1)
    src = RowSource(store, sp.test, store.phenotype[sp.test], cache=False)
    for x, y, r in src.dataset(32, shuffle=False):
        assert x.shape[1:] == (50, 4) and x.dtype.name == "float32"
        channel_of_code = np.array([0, 2, 1, 3])  # codes -1, 0, 1, 2 -> published channel
        expected = channel_of_code[store.genotypes[:][r.numpy()].astype(int) + 1]
        np.testing.assert_array_equal(np.argmax(x.numpy(), -1), expected)
        np.testing.assert_allclose(y.numpy(), store.phenotype[r.numpy()])
        break


def test_should_cache():
    assert should_cache(Config(cache="auto", cache_limit_mb=1), 100, 100)
    assert not should_cache(Config(cache="auto", cache_limit_mb=1), 10_000, 1_000)
    assert not should_cache(Config(cache="never"), 1, 1) and should_cache(Config(cache="always"), 10**9, 10**6)


def _peak_traced(store, cache):
    sp = fold_split(store.fold, 5, 1)
    tracemalloc.start()
    tracemalloc.reset_peak()
    src = RowSource(store, sp.train, store.phenotype[sp.train], cache=cache, window_chunks=4)
    n = sum(len(r) for _, _, r in src.batches(64, shuffle=True, seed=0, epoch=1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == len(sp.train)
    return peak


def test_streaming_memory_does_not_grow_with_samples(tmp_path):
    """Python/NumPy allocations (tracemalloc) during a streamed epoch: bounded by the
    shuffle window, the same for 2,000 and 20,000 samples, while the cached path grows."""
    sizes = {}
    for n in (2000, 20000):
        simulate_store(tmp_path / f"{n}.zarr", samples=n, snps=500, folds=5, chunk_rows=128)
        s = open_store(tmp_path / f"{n}.zarr")
        sizes[n] = (_peak_traced(s, cache=False), _peak_traced(s, cache=True))
    window = 4 * 128 * 500
    (small_stream, small_cache), (big_stream, big_cache) = sizes[2000], sizes[20000]
    assert big_stream < 4 * window, f"streamed epoch peaked at {big_stream} bytes"
    assert abs(big_stream - small_stream) < window
    # the same measurement sees the cache: 12,000 more training rows x 500 SNPs of int8
    assert big_cache - small_cache > 0.8 * 12000 * 500
