"""The headline ensemble against its best member, for two ways of choosing its weights, on
finished runs (no training: it reads the CNN's and every baseline's predictions.csv and
val_predictions.csv).

    python bench/stacking.py RUN [RUN ...] [--dataset NAME]

``own``: for test fold i, the weights that fit fold i's validation fold best (reduce's rule
until 2026-12-04).  ``pooled`` (reduce's rule now, computed by hpcsnp.run.ensemble): the
validation predictions of every fold whose validation fold is not i, i.e. every line
outside fold i once, so fold i's phenotypes are never scored.  ``best member``: the CNN or
baseline with the highest mean test PCC of the run, chosen in hindsight (a bar no rule
that sees only validation data can be sure to reach).  Prints, per run, each rule's mean
test PCC and its difference from the best member paired by fold, then the same over all
runs' folds together.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from hpcsnp.run.ensemble import ensemble_folds, simplex_weights
from hpcsnp.run.predict import choose_dataset
from hpcsnp.run.reduce import baseline_rows
from hpcsnp.rundir import RunDir


def fold_table(path: str, dataset: str | None) -> pd.DataFrame:
    """Per test fold: every member's test PCC and the ensemble's under each rule."""
    run = RunDir(path)
    ds = choose_dataset(run, dataset)
    name, k = ds.dataset, ds.n_folds
    baselines = sorted({r["model"] for r in baseline_rows(run.path, ds)})
    models = ["cnn", *baselines]
    if not baselines:
        raise SystemExit(f"{path}: no baseline ran, so there is no ensemble")

    def load(i, file):
        frames = [pd.read_csv(run.model_fold(name, m, i) / file, dtype={"sample_id": str}).set_index("sample_id")
                  for m in models]
        ids = frames[0].index
        return frames[0]["truth"].to_numpy(), np.column_stack([f.loc[ids, "prediction"] for f in frames])

    grid = simplex_weights(len(models))
    pooled = {row["fold"]: row["pcc"] for row, _, _ in ensemble_folds(run.path, ds, baselines)}
    rows = []
    for i in range(1, k + 1):
        yv, Pv = load(i, "val_predictions.csv")
        own = grid[np.argmin((((Pv @ grid.T) - yv[:, None]) ** 2).mean(axis=0))]
        y, P = load(i, "predictions.csv")
        rows.append({"run": f"{path} {name}", "fold": i,
                     **{m: np.corrcoef(y, P[:, j])[0, 1] for j, m in enumerate(models)},
                     "own": np.corrcoef(y, P @ own)[0, 1], "pooled": pooled[i]})
    t = pd.DataFrame(rows)
    best = max(models, key=lambda m: t[m].mean())
    return t.assign(best_member=best, best=t[best])


def summary(t: pd.DataFrame, label: str) -> str:
    out = [label]
    for rule in ("own", "pooled"):
        d = t[rule] - t["best"]
        out.append(f"  {rule:6s} mean PCC {t[rule].mean():.4f}, minus the best member {d.mean():+.4f} "
                   f"(worst fold {d.min():+.4f}; ahead on {(d > 0).sum()}/{len(d)} folds; "
                   f"more than 0.01 behind on {(d < -0.01).sum()})")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--dataset")
    args = ap.parse_args(argv)
    tables = [fold_table(r, args.dataset) for r in args.runs]
    for t in tables:
        print(summary(t, f"{t['run'].iat[0]}: best member {t['best_member'].iat[0]} {t['best'].mean():.4f}"))
    if len(tables) > 1:
        print(summary(pd.concat(tables), f"all {len(tables)} runs, {sum(map(len, tables))} folds"))


if __name__ == "__main__":
    main()
