"""Several traits on one store and covariates, on real SoyNAM data.

The QA genotypes are ingested once (height_qa.tsv.gz: 5,059 lines) and a table gives two
traits of those lines: the multi-environment BLUP height of height_qa and the single-
environment (IL 2013) height of height_liu_qa, which 22 of the lines lack.  Then:

1. ``baseline --pheno TABLE --trait height_il2013`` on the one store against the same
   baselines on height_liu_qa ingested as a store of its own (the phenotyped lines alone),
   every fold, both GBLUP encodings: the PCC per fold.  One-hot GBLUP reads a missing call
   as a category, so it should agree to rounding; dosage GBLUP fills a missing call with
   the SNP's mean over the store's lines (5,059 against 5,037), so it may differ slightly.
2. ``gwas`` of the BLUP height with the family as a categorical covariate (39 fixed
   effects) against without: lambda, h2, the hits, and the correlation of -log10 p.
3. ``baseline`` (GBLUP, both encodings) of the BLUP height with the family as a covariate
   against without, every fold: what the family means add to the genomic prediction.

usage:
  python bench/bench_traits.py --work DIR [--data ../shared/data/soynam] [--folds 1-10]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import hpcsnp  # noqa: E402
from bench_scale import timed as timed_any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, log: Path) -> dict:
    r = timed_any(cmd, log)
    if r["rc"]:
        sys.exit(f"{' '.join(map(str, cmd[2:]))} failed (exit {r['rc']}): see {log}")
    return r


def table(data: Path, work: Path) -> tuple[Path, Path]:
    """traits.tsv (id = the row number of height_qa, as a text ingest names lines) and
    family.tsv, from strains.tsv, which names each row of either file."""
    strains = pd.read_csv(data / "strains.tsv", sep="\t")
    main = strains[strains["main"] == 1].reset_index(drop=True)
    liu_rows = strains[strains["liu"] == 1].reset_index(drop=True)
    blup = pd.read_csv(data / "height_qa.tsv.gz", sep="\t", usecols=["fold", "phenotype"])
    liu = pd.read_csv(data / "height_liu_qa.tsv.gz", sep="\t", usecols=["fold", "phenotype"])
    assert len(blup) == len(main) and len(liu) == len(liu_rows)
    il = pd.Series(liu["phenotype"].to_numpy(), index=liu_rows["strain"])
    ids = np.arange(1, len(main) + 1)
    traits = pd.DataFrame({"id": ids, "height_blup": blup["phenotype"],
                           "height_il2013": il.reindex(main["strain"]).to_numpy()})
    traits.to_csv(work / "traits.tsv", sep="\t", index=False, na_rep="NA")
    pd.DataFrame({"id": ids, "family": main["family"].astype(str)}).to_csv(work / "family.tsv", sep="\t",
                                                                           index=False)
    return work / "traits.tsv", work / "family.tsv"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "soynam"))
    ap.add_argument("--folds", default="1-10")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    work, data = Path(a.work), Path(a.data)
    work.mkdir(parents=True, exist_ok=True)
    lo, hi = map(int, a.folds.split("-"))
    traits, family = table(data, work)
    for name in ("height_qa", "height_liu_qa"):
        if not (work / f"{name}.zarr").exists():
            timed(hpcsnp("ingest", data / f"{name}.tsv.gz", "-o", work / f"{name}.zarr"), work / f"{name}.log")
    result = {"folds": {}, "gwas": {}}
    folds = [str(i) for i in range(lo, hi + 1)]
    fold_args = [x for i in folds for x in ("--fold", i)]
    common = ["--encoding", "both", "--threads", a.threads, *fold_args]
    t0 = time.perf_counter()
    timed(hpcsnp("baseline", work / "height_qa.zarr", "--run", work / "run", "--pheno", traits, "--trait",
                 "height_il2013", *common), work / "view.log")
    view_s = time.perf_counter() - t0
    timed(hpcsnp("baseline", work / "height_liu_qa.zarr", "--run", work / "run", *common), work / "alone.log")
    rows = []
    for enc in ("dosage", "onehot"):
        for i in folds:
            a_ = json.loads((work / "run" / "height_qa.height_il2013" / f"baseline_{enc}" / f"fold_{i}" /
                             "metrics.json").read_text())
            b_ = json.loads((work / "run" / "height_liu_qa" / f"baseline_{enc}" / f"fold_{i}" /
                             "metrics.json").read_text())
            rows.append({"encoding": enc, "fold": int(i), "view_pcc": a_["pcc"], "alone_pcc": b_["pcc"],
                         "diff": a_["pcc"] - b_["pcc"], "n_test": (a_["n_test"], b_["n_test"]),
                         "n_fit": (a_["n_fit"], b_["n_fit"])})
    result["folds"] = rows
    result["view_seconds"] = view_s
    family_args = ["--covar", family, "--covar-name", "family:cat"]
    for label, extra in (("plain", []), ("family", family_args)):
        out = work / f"gwas_{label}"
        r = timed(hpcsnp("gwas", work / "height_qa.zarr", "-o", out, "--threads", a.threads, "--no-progress",
                         *extra), work / f"gwas_{label}.log")
        summary = json.loads((out / "gwas.json").read_text())
        tab = pd.read_csv(out / "gwas.tsv", sep="\t")
        result["gwas"][label] = {k: summary[k] for k in ("lambda_gc", "h2_reml", "significant_bonferroni",
                                                          "significant_bh_5pct", "method")}
        result["gwas"][label]["seconds"] = r["seconds"]
        result["gwas"][label]["top"] = tab.nsmallest(5, "P")[["ID", "P"]].values.tolist()
    p0 = pd.read_csv(work / "gwas_plain" / "gwas.tsv", sep="\t")["P"]
    p1 = pd.read_csv(work / "gwas_family" / "gwas.tsv", sep="\t")["P"]
    result["gwas"]["spearman_logp"] = float(pd.Series(-np.log10(p0)).corr(pd.Series(-np.log10(p1)),
                                                                          method="spearman"))
    for label, extra in (("blup", []), ("blup_family", family_args)):
        timed(hpcsnp("baseline", work / "height_qa.zarr", "--run", work / label, *common, *extra),
              work / f"{label}.log")
    fam = []
    for enc in ("dosage", "onehot"):
        for i in folds:
            pcc = [json.loads((work / label / "height_qa" / f"baseline_{enc}" / f"fold_{i}" /
                               "metrics.json").read_text())["pcc"] for label in ("blup", "blup_family")]
            fam.append({"encoding": enc, "fold": int(i), "plain_pcc": pcc[0], "family_pcc": pcc[1],
                        "diff": pcc[1] - pcc[0]})
    result["family_baseline"] = fam
    (work / "traits.json").write_text(json.dumps(result, indent=2) + "\n")
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    print(frame.groupby("encoding")[["view_pcc", "alone_pcc", "diff"]].agg(["mean", lambda s: s.abs().max()]))
    print(json.dumps(result["gwas"], indent=2))
    fam = pd.DataFrame(fam)
    print(fam.groupby("encoding")[["plain_pcc", "family_pcc", "diff"]].agg(["mean", "std"]))
    print(fam.groupby("encoding")["diff"].apply(lambda d: f"{(d > 0).sum()}/{len(d)} folds ahead"))


if __name__ == "__main__":
    main()
