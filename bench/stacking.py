"""Ensemble weights from one validation fold (what reduce does) against weights from the
validation predictions of every other fold pooled, on a finished run.

    python bench/stacking.py RUN [--dataset NAME]

For test fold i the pooled choice uses the validation predictions of every fold whose
validation fold is not i (so fold i's phenotypes are never scored), ~K-1 times as many
lines as one validation fold.  Prints, per test fold, both weight vectors and the test
PCC each gives, then the means and the spread of each weight across folds.  No training:
it reads predictions.csv and val_predictions.csv of the CNN and every baseline.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from hpcsnp.run.ensemble import simplex_weights
from hpcsnp.run.predict import choose_dataset
from hpcsnp.run.reduce import baseline_rows
from hpcsnp.rundir import RunDir


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--dataset")
    args = ap.parse_args(argv)
    run = RunDir(args.run)
    ds = choose_dataset(run, args.dataset)
    name, k = ds.dataset, ds.n_folds
    models = ["cnn", *sorted({r["model"] for r in baseline_rows(run.path, ds)})]

    def load(i, file):
        frames = [pd.read_csv(run.model_fold(name, m, i) / file, dtype={"sample_id": str}).set_index("sample_id")
                  for m in models]
        ids = frames[0].index
        return frames[0]["truth"].to_numpy(), np.column_stack([f.loc[ids, "prediction"] for f in frames])

    val = {i: load(i, "val_predictions.csv") for i in range(1, k + 1)}
    test = {i: load(i, "predictions.csv") for i in range(1, k + 1)}
    grid = simplex_weights(len(models))

    def choose(folds):
        y = np.concatenate([val[j][0] for j in folds])
        P = np.vstack([val[j][1] for j in folds])
        return grid[np.argmin((((P @ grid.T) - y[:, None]) ** 2).mean(axis=0))]

    rows = []
    for i in range(1, k + 1):
        own = choose([i])
        pooled = choose([j for j in range(1, k + 1) if j % k + 1 != i])
        y, P = test[i]
        rows.append({"fold": i, **{f"own_{m}": w for m, w in zip(models, own)},
                     **{f"pooled_{m}": w for m, w in zip(models, pooled)},
                     "pcc_own": np.corrcoef(y, P @ own)[0, 1], "pcc_pooled": np.corrcoef(y, P @ pooled)[0, 1]})
    t = pd.DataFrame(rows)
    print(f"{name}: models {', '.join(models)}")
    print(t.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    d = t["pcc_pooled"] - t["pcc_own"]
    print(f"\nmean test PCC: own validation fold {t['pcc_own'].mean():.4f}, pooled {t['pcc_pooled'].mean():.4f} "
          f"(difference {d.mean():+.4f} +- {d.std(ddof=1):.4f}, pooled ahead on {(d > 0).sum()} of {k} folds)")
    for m in models:
        print(f"w_{m}: own {t[f'own_{m}'].mean():.2f} +- {t[f'own_{m}'].std(ddof=1):.2f}, "
              f"pooled {t[f'pooled_{m}'].mean():.2f} +- {t[f'pooled_{m}'].std(ddof=1):.2f} (sd across folds)")


if __name__ == "__main__":
    main()
