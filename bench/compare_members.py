"""What a fold's predictors are worth: each model's refitted weights (the default's) and its
early-stopped weights, averaged in every combination, scored on the test folds without
training anything new.

A finished default run keeps each model's test predictions after its refit
(seed_predictions.csv); a run of the same stores with ``--no-refit`` and the same models
per fold keeps those of the early-stopped weights.  Training is seeded, so the second
run's early stops are the default run's: the script checks that both runs' validation
predictions are identical before it compares anything.

    hpcsnp cv A.zarr B.zarr --run STOPPED --no-baseline --no-refit --models-per-fold 2
    python bench/compare_members.py DEFAULT_RUN STOPPED [--headline WORK]

Prints, per data set, the mean test PCC of each combination and its paired per-fold
difference from the default (mean ± sd, folds ahead).  With ``--headline WORK`` each
combination's fold predictions replace the CNN's in a copy of DEFAULT_RUN under WORK
(baselines included) and ``hpcsnp reduce`` recomputes the ensemble, whose paired
difference is printed too.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# name -> (what it is, {predictor: weight}); r = refitted weights, e = early-stopped, of seed 0 / 1
COMBINATIONS = {
    "default": ("both models' refits (the shipped default)", {"r0": 1, "r1": 1}),
    "r0": ("the first model's refit alone", {"r0": 1}),
    "e0+r0": ("one model: its early-stopped and refitted weights", {"e0": 1, "r0": 1}),
    "e0+e1": ("both models early-stopped, no refit", {"e0": 1, "e1": 1}),
    "r0+e1": ("the second model not refitted", {"r0": 1, "e1": 1}),
    "all four": ("both models, both weights", {"e0": 1, "e1": 1, "r0": 1, "r1": 1}),
}


def fold_predictions(default: Path, stopped: Path, dataset: str, fold: int) -> pd.DataFrame:
    """The fold's test lines with columns truth, r0, r1, e0, e1; refuses folds whose early
    stops differ between the runs."""
    d, s = (run / dataset / f"fold_{fold}" for run in (default, stopped))
    vd, vs = (pd.read_csv(x / "val_predictions.csv") for x in (d, s))
    if not (vd.sample_id.equals(vs.sample_id) and np.array_equal(vd.prediction, vs.prediction)):
        sys.exit(f"{dataset} fold {fold}: the runs' validation predictions differ, so their early stops do too")
    r, e = (pd.read_csv(x / "seed_predictions.csv") for x in (d, s))
    m = r.merge(e, on=["sample_id", "truth"], suffixes=("_r", "_e"), validate="one_to_one")
    if len(m) != len(r):
        sys.exit(f"{dataset} fold {fold}: the runs' test lines differ")
    return pd.DataFrame({"sample_id": m.sample_id, "truth": m.truth,
                         **{f"{k}{i}": m[f"seed_{i}_{k}"] for k in "re" for i in (0, 1)}})


def combine(p: pd.DataFrame, weights: dict) -> np.ndarray:
    return sum(w * p[k].to_numpy() for k, w in weights.items()) / sum(weights.values())


def summarise(table: pd.DataFrame, what: str) -> None:
    for ds, g in table.groupby("dataset", sort=True):
        print(f"{ds}: {what}, mean test PCC over {len(g)} folds; minus the default, paired by fold")
        for name in COMBINATIONS:
            d = g[name] - g["default"]
            print(f"  {name:9s} {g[name].mean():.4f}  {d.mean():+.4f} ± {d.std(ddof=1):.4f} ({(d > 0).sum()}/{len(d)} "
                  f"ahead)  {COMBINATIONS[name][0]}")


def headline(default: Path, predictions: dict, work: Path) -> pd.DataFrame:
    """The ensemble's test PCC per fold with each combination's CNN predictions, from copies
    of the default run with their predictions.csv replaced and ``hpcsnp reduce`` rerun."""
    rows = []
    for name, (_, weights) in COMBINATIONS.items():
        run = work / name.replace("+", "_").replace(" ", "_")
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(default, run)
        for (ds, fold), p in predictions.items():
            path = run / ds / f"fold_{fold}" / "predictions.csv"
            old = pd.read_csv(path)
            new = old.merge(pd.DataFrame({"sample_id": p.sample_id, "combined": combine(p, weights)}),
                            on="sample_id", validate="one_to_one")
            if len(new) != len(old):
                sys.exit(f"{ds} fold {fold}: predictions.csv and seed_predictions.csv list different lines")
            old["prediction"] = new["combined"].to_numpy()
            old.to_csv(path, index=False)
        subprocess.run([sys.executable, "-m", "hpcsnp", "reduce", "--run", str(run), "--no-plot"], check=True,
                       stdout=subprocess.DEVNULL)
        log = pd.read_csv(run / "fold_pcc_log.csv")
        log = log[log.model == "ensemble"]
        rows += [{"dataset": r.dataset, "fold": r.fold, "name": name, "pcc": r.pcc} for r in log.itertuples()]
        shutil.rmtree(run)
    return pd.DataFrame(rows).pivot(index=["dataset", "fold"], columns="name", values="pcc").reset_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("default", type=Path, help="a finished default run (two models per fold, refitted)")
    ap.add_argument("stopped", type=Path, help="the same stores with --no-refit and the same models per fold")
    ap.add_argument("--headline", type=Path, metavar="WORK", help="also recompute the ensemble in copies under WORK")
    a = ap.parse_args()
    rows, predictions = [], {}
    for ds_dir in sorted(p for p in a.stopped.iterdir() if p.is_dir()):
        for fold_dir in sorted(ds_dir.glob("fold_*[0-9]"), key=lambda p: int(p.name.split("_")[1])):
            fold = int(fold_dir.name.split("_")[1])
            p = fold_predictions(a.default, a.stopped, ds_dir.name, fold)
            predictions[ds_dir.name, fold] = p
            t = p.truth.to_numpy()
            rows.append({"dataset": ds_dir.name, "fold": fold,
                         **{name: np.corrcoef(t, combine(p, w))[0, 1] for name, (_, w) in COMBINATIONS.items()}})
    if not rows:
        sys.exit(f"no finished folds in {a.stopped}")
    summarise(pd.DataFrame(rows), "CNN")
    if a.headline:
        a.headline.mkdir(parents=True, exist_ok=True)
        summarise(headline(a.default, predictions, a.headline), "ensemble (headline)")


if __name__ == "__main__":
    main()
