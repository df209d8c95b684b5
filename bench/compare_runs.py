"""Two finished runs of the same folds, side by side: per data set and model, the mean test PCC
of each, their paired per-fold difference (mean ± sd, folds ahead, largest) and, from their
profiles (bench_full_cv.py's profile.csv), the core-seconds of every part.

usage: python bench/compare_runs.py BEFORE_WORK AFTER_WORK
(each a --work directory of bench/bench_full_cv.py: run/fold_pcc_log.csv, profile.csv, timings.json)
"""

import json
import sys
from pathlib import Path

import pandas as pd


def pcc_table(work: Path) -> pd.DataFrame:
    """PCC per (dataset, model, fold), the headline included (reduce's fold_pcc_log.csv)."""
    return pd.read_csv(work / "run" / "fold_pcc_log.csv")[["dataset", "model", "fold", "pcc"]]


def main(before: Path, after: Path) -> None:
    a, b = pcc_table(before), pcc_table(after)
    both = a.merge(b, on=["dataset", "model", "fold"], suffixes=("_before", "_after"))
    both["diff"] = both.pcc_after - both.pcc_before
    print("mean test PCC, after minus before, paired by fold (mean ± sd; folds ahead; largest |difference|)")
    for (ds, model), g in both.groupby(["dataset", "model"], sort=True):
        d = g["diff"]
        print(f"  {ds:12s} {model:14s} {g.pcc_before.mean():.4f} -> {g.pcc_after.mean():.4f}  "
              f"{d.mean():+.4f} ± {d.std(ddof=1):.4f}  ({(d > 0).sum()}/{len(d)} ahead, {(d == 0).sum()} equal; "
              f"largest {d.abs().max():.4f})")
    parts = ["early_stopped_s", "patience_s", "refit_s", "predict_s", "attributions_s", "rest_s", "cnn_total_s",
             "gblup_dosage_s", "gblup_onehot_s", "rkhs_s", "rkhs_local_s"]
    pa, pb = (pd.read_csv(w / "profile.csv") for w in (before, after))
    print("\ncore-seconds summed over the folds: before -> after")
    for p in parts:
        print(f"  {p:16s} {pa[p].sum():8.0f} -> {pb[p].sum():8.0f}")
    total = [p for p in parts if p not in ("early_stopped_s", "patience_s", "refit_s", "predict_s",
                                            "attributions_s", "rest_s")]
    print(f"  {'all':16s} {pa[total].to_numpy().sum():8.0f} -> {pb[total].to_numpy().sum():8.0f}")
    if not all((w / "timings.json").exists() for w in (before, after)):
        return
    ta, tb = (json.loads((w / "timings.json").read_text()) for w in (before, after))
    print(f"\nhpcsnp cv wall: {ta['cv_seconds']:.0f} s -> {tb['cv_seconds']:.0f} s; "
          f"largest process {ta['cv_rss_mb']:.0f} -> {tb['cv_rss_mb']:.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
