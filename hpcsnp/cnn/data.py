"""tf.data input pipeline over a store: chunk reads, shuffling, one-hot in graph.

The genotype matrix is never expanded to one-hot outside a batch, and never
read whole: a fold's rows are either streamed window by window (a few store
chunks at a time, shuffled within the window, windows in random order) or,
when they fit under ``cache_limit_mb``, read once chunk by chunk into an int8
array.  Either way a batch is int8 on the host and becomes float32 one-hot
inside the graph (``one_hot``), in the channel order of ``genotypes.ONE_HOT_TABLE``.
"""

from __future__ import annotations

import numpy as np

from hpcsnp.genotypes import ONE_HOT_TABLE
from hpcsnp.store import read_genotype_rows


def one_hot(codes):
    """int8 codes (..., N) -> float32 one-hot (..., N, 4), inside the graph."""
    import tensorflow as tf

    table = tf.constant(ONE_HOT_TABLE)
    return tf.gather(table, tf.cast(codes, tf.int32) + 1)


class RowSource:
    """Yields (int8 genotypes, target, row index) batches for a set of store rows.

    ``cached`` reads the rows once, chunk by chunk, into one int8 array;
    otherwise every epoch streams the store again.
    """

    def __init__(self, store, rows, target, *, cache: bool, window_chunks: int = 4):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.target = np.asarray(target, dtype=np.float32)  # aligned with rows
        self.window_chunks = window_chunks
        self.chunk = store.chunk_rows
        self.cached = None
        if cache:
            self.cached = np.empty((len(self.rows), store.n_variants), dtype=np.int8)
            pos = 0
            for block, sel in self._chunks(np.arange(self._n_chunks())):
                self.cached[pos:pos + len(sel)] = block
                pos += len(sel)

    def __len__(self):
        return len(self.rows)

    def _n_chunks(self):
        return -(-self.store.n_samples // self.chunk)

    def _chunks(self, chunk_order):
        """(int8 rows, positions into self.rows) for each chunk holding some of our rows."""
        for c in chunk_order:
            lo, hi = c * self.chunk, min((c + 1) * self.chunk, self.store.n_samples)
            a, b = np.searchsorted(self.rows, [lo, hi])
            if a == b:
                continue
            block = read_genotype_rows(self.store, lo, hi)
            yield block[self.rows[a:b] - lo], np.arange(a, b)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0):
        rng = np.random.default_rng([seed, epoch]) if shuffle else None
        if self.cached is not None:
            order = rng.permutation(len(self.rows)) if shuffle else np.arange(len(self.rows))
            for s in range(0, len(order), batch_size):
                b = order[s:s + batch_size]
                yield self.cached[b], self.target[b], self.rows[b]
            return
        yield from self._stream(batch_size, rng)

    def _stream(self, batch_size, rng):
        n_chunks = self._n_chunks()
        order = rng.permutation(n_chunks) if rng is not None else np.arange(n_chunks)
        pend_g, pend_i = [], []  # rows carried over between windows
        for w in range(0, n_chunks, self.window_chunks):
            parts = list(self._chunks(order[w:w + self.window_chunks]))
            if not parts:
                continue
            g = np.concatenate(pend_g + [p[0] for p in parts])
            i = np.concatenate(pend_i + [p[1] for p in parts])
            if rng is not None:
                perm = rng.permutation(len(i))
                g, i = g[perm], i[perm]
            full = len(i) - len(i) % batch_size
            for s in range(0, full, batch_size):
                b = i[s:s + batch_size]
                yield g[s:s + batch_size], self.target[b], self.rows[b]
            pend_g, pend_i = [g[full:]], [i[full:]]
        if pend_i and len(pend_i[0]):
            b = pend_i[0]
            yield pend_g[0], self.target[b], self.rows[b]

    def iterate(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                threads: int | None = None):
        """(int8 genotypes [b, N], target [b], row [b]) batches for one pass, one-hot left to the
        compiled step.  Rows held in memory are sliced straight from the array: a tf.data
        pipeline built afresh every epoch costs 0.5 s alone and 3-5 s when folds run side
        by side, as much as 40 % of a SoyNAM epoch.  Streamed rows go through tf.data
        (``dataset``), which reads the next store window while the step runs."""
        if self.cached is not None:
            return self.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        return self.dataset(batch_size, shuffle=shuffle, seed=seed, epoch=epoch, threads=threads, encode=False)

    def dataset(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                threads: int | None = None, encode: bool = True):
        """A tf.data.Dataset of (one-hot float32 [b, N, 4], target [b], row [b]); with
        ``encode=False`` the int8 genotypes [b, N] instead."""
        import tensorflow as tf

        n = self.store.n_variants
        ds = tf.data.Dataset.from_generator(
            lambda: self.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch),
            output_signature=(tf.TensorSpec((None, n), tf.int8),
                              tf.TensorSpec((None,), tf.float32),
                              tf.TensorSpec((None,), tf.int64)))
        if encode:
            ds = ds.map(lambda g, y, r: (one_hot(g), y, r))
        opts = tf.data.Options()
        opts.deterministic = True
        if threads:
            opts.threading.private_threadpool_size = threads
        return ds.with_options(opts).prefetch(2)


def should_cache(cfg, n_rows: int, n_variants: int) -> bool:
    if cfg.cache == "always":
        return True
    if cfg.cache == "never":
        return False
    return n_rows * n_variants <= cfg.cache_limit_mb * (1 << 20)
