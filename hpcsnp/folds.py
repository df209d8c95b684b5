"""The fold rotation every stage shares: test fold i, validation fold i+1 (1 after K),
training = the rest (fold 0, lines without a phenotype, is in no set); and the check that
a fold can be trained and scored at all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcsnp.errors import InputError


@dataclass(frozen=True)
class FoldSplit:
    test_fold: int
    val_fold: int
    train: np.ndarray  # sorted row indices into the store
    val: np.ndarray
    test: np.ndarray


def validation_fold(test_fold: int, k: int, shift: int = 0) -> int:
    """The fold after the test fold, 1 after K; ``shift``: that many folds further on,
    skipping the test fold (a fold's later models, where they rotate: Config.rotates).

    >>> [validation_fold(i, 3) for i in (1, 2, 3)]
    [2, 3, 1]
    >>> [validation_fold(1, 4, s) for s in range(4)]
    [2, 3, 4, 2]
    """
    return (test_fold + shift % (k - 1)) % k + 1


def fold_split(folds: np.ndarray, k: int, test_fold: int, shift: int = 0) -> FoldSplit:
    if not 1 <= test_fold <= k:
        raise InputError(f"fold {test_fold} is outside 1..{k} (this store has K={k} folds)")
    v = validation_fold(test_fold, k, shift)
    test = np.flatnonzero(folds == test_fold)
    val = np.flatnonzero(folds == v)
    train = np.flatnonzero((folds > 0) & (folds != test_fold) & (folds != v))
    return FoldSplit(test_fold, v, train, val, test)


def check_fold_usable(store, split) -> None:
    """Refuse, before any work, a fold whose test metrics could not be computed or whose
    training could not be scaled: fewer than 2 samples in a set, or a constant phenotype."""
    fold = split.test_fold
    y = store.phenotype
    for name, rows in (("training", split.train), ("validation", split.val), ("test", split.test)):
        if len(rows) < 2:
            raise InputError(f"{store.path}: fold {fold} cannot be trained and evaluated: its {name} set has "
                             f"{len(rows)} sample(s), at least 2 are needed (re-ingest with fewer, larger folds)")
    for name, rows in (("training", split.train), ("test", split.test)):
        if np.ptp(y[rows]) == 0:
            raise InputError(f"{store.path}: fold {fold}: the phenotype is the same ({y[rows][0]:.6g}) for every "
                             f"sample of its {name} set, so " + ("PCC is undefined" if name == "test" else
                                                                 "there is nothing to learn"))
