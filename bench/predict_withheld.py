"""Predicting lines the run never saw, on real data: withhold one fold, train on the rest,
predict the withheld lines from a file with ids and SNPs only, and score the predictions.

    python bench/predict_withheld.py DATA.tsv.gz STRAINS.tsv [--withhold 10] [--workdir DIR]

DATA is a SoyNAM file in the input format (fold, phenotype, SNPs; no id column) and
STRAINS the table giving each row's strain and family (same order), as shipped with the
SoyNAM data.  The script writes the training lines (every fold but --withhold; folds
renumbered 1..K-1) with their strain ids, ingests them, runs `hpcsnp cv` with the
defaults (CNN + GBLUP baselines), then `hpcsnp predict` on the withheld lines, and
prints the PCC of every column with the withheld phenotypes, overall and within family
(mean over families with at least 5 withheld lines), the share of withheld phenotypes
inside the prediction interval at each of LEVELS (with the binomial standard error), the
alignment report and the time of each step.  A --workdir that already holds a finished run is reused.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["prediction", "cnn_mean", "gblup_dosage", "gblup_onehot"]
LEVELS = (0.8, 0.9, 0.95)


def split_files(data: Path, strains: Path, withhold: int, work: Path) -> None:
    st = pd.read_csv(strains, sep="\t")
    opener = gzip.open if data.suffix == ".gz" else open
    with opener(data, "rt") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f]
    if len(rows) != len(st):
        raise SystemExit(f"{data} has {len(rows)} rows, {strains} {len(st)}")
    with open(work / "train.tsv", "w") as t, open(work / "new.tsv", "w") as n, open(work / "truth.tsv", "w") as tr:
        t.write("\t".join(["strain", *header]) + "\n")
        n.write("\t".join(["strain", *header[2:]]) + "\n")
        tr.write("strain\tphenotype\tfamily\n")
        for s, fam, r in zip(st["strain"], st["family"], rows):
            fold = int(r[0])
            if fold == withhold:
                n.write("\t".join([s, *r[2:]]) + "\n")
                tr.write(f"{s}\t{r[1]}\t{fam}\n")
            else:
                t.write("\t".join([s, str(fold if fold < withhold else fold - 1), *r[1:]]) + "\n")


def hpcsnp(*args) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpcsnp", *map(str, args)], check=True)
    return time.perf_counter() - t


def scores(pred: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    t = truth.set_index("strain").loc[pred["sample_id"]]
    y, fam = t["phenotype"].to_numpy(float), t["family"].to_numpy()
    rows = []
    for c in COLUMNS:
        p = pred[c].to_numpy(float)
        within = [np.corrcoef(y[m], p[m])[0, 1] for f in np.unique(fam) if (m := fam == f).sum() >= 5]
        rows.append({"column": c, "pcc": np.corrcoef(y, p)[0, 1], "within_family_pcc": np.nanmean(within),
                     "families": len(within)})
    return pd.DataFrame(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("strains", type=Path)
    ap.add_argument("--withhold", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path("predict_withheld"))
    args = ap.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    split_files(args.data, args.strains, args.withhold, work)
    times = {}
    if not (work / "run" / "fold_pcc_summary.csv").exists():
        times["ingest"] = hpcsnp("ingest", work / "train.tsv", "-o", work / "train.zarr", "--force")
        times["cv"] = hpcsnp("cv", work / "train.zarr", "--run", work / "run")
    times["predict"] = hpcsnp("predict", "--run", work / "run", work / "new.tsv", "-o", work / "pred.csv", "--force")
    times["predict again (GBLUP refit cached)"] = hpcsnp("predict", "--run", work / "run", work / "new.tsv", "-o",
                                                         work / "pred.csv", "--force")
    pred = pd.read_csv(work / "pred.csv", dtype={"sample_id": str})
    table = scores(pred, pd.read_csv(work / "truth.tsv", sep="\t", dtype={"strain": str}))
    report = json.loads((work / "pred.alignment.json").read_text())
    print(f"\nwithheld fold {args.withhold}: {len(pred)} lines predicted by {report['dataset']} "
          f"({len(report['folds'])} fold models); headline: {report['headline']}, weights {report['weights']}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    truth = pd.read_csv(work / "truth.tsv", sep="\t", dtype={"strain": str}).set_index("strain")
    for level in LEVELS:
        out = work / f"pred_{level}.csv"
        hpcsnp("predict", "--run", work / "run", work / "new.tsv", "-o", out, "--force", "--level", level,
               "--no-progress")
        p = pd.read_csv(out, dtype={"sample_id": str})
        y = truth.loc[p["sample_id"], "phenotype"].to_numpy(float)
        inside = ((y >= p["lower"]) & (y <= p["upper"])).mean()
        half = json.loads(out.with_name(out.stem + ".alignment.json").read_text())["interval"]["half_width"]
        print(f"interval at {level:.2f}: covers {inside:.3f} of the withheld lines "
              f"(se {np.sqrt(level * (1 - level) / len(p)):.3f}), half-width {half:.4g}")
    print("alignment: " + ", ".join(f"{k} {v}" for k, v in report["alignment"].items() if k != "examples"))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
