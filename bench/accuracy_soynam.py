"""Accuracy on SoyNAM height against every baseline, with within-family PCC and the gain
from several seeds per fold.

    python bench/accuracy_soynam.py DATA_DIR --work DIR [-- CV OPTIONS...]

DATA_DIR holds height_imp.tsv.gz, height_qa.tsv.gz and strains.tsv (the SoyNAM data in
the input format; strains.tsv gives each row's strain and family).  The script writes
each file with the strain as sample id, ingests it with the families as groups
(`--groups`), runs `hpcsnp cv` on both stores with the given options (default: the
defaults), and prints the summary (PCC and within-family PCC per model), the paired
comparison with the best baseline, and, when the folds trained several seeds, the mean
PCC of the average of the first 1, 2, ... seeds.  A --work directory whose run is
complete is reported again without training.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

FILES = ("height_imp", "height_qa")


def with_ids(data: Path, strains: pd.DataFrame, out: Path) -> None:
    with gzip.open(data, "rt") as f, open(out, "w") as o:
        o.write("strain\t" + f.readline())
        for s, line in zip(strains["strain"], f):
            o.write(f"{s}\t{line}")


def seed_gain(run: Path, dataset: str, n_folds: int) -> list[float]:
    """Mean over folds of the test PCC of the average of the first m seeds, m = 1.."""
    out = []
    frames = [pd.read_csv(run / dataset / f"fold_{i}" / "seed_predictions.csv") for i in range(1, n_folds + 1)]
    seeds = [c for c in frames[0].columns if c.startswith("seed_")]
    for m in range(1, len(seeds) + 1):
        out.append(float(np.mean([np.corrcoef(f["truth"], f[seeds[:m]].mean(axis=1))[0, 1] for f in frames])))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    cv_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.cv_args = cv_args
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    strains = pd.read_csv(args.data_dir / "strains.tsv", sep="\t", dtype=str)
    stores = []
    for name in FILES:
        store = work / f"{name}.zarr"
        if not store.exists():
            with_ids(args.data_dir / f"{name}.tsv.gz", strains, work / f"{name}.tsv")
            subprocess.run([sys.executable, "-m", "hpcsnp", "ingest", str(work / f"{name}.tsv"), "-o", str(store),
                            "--groups", str(args.data_dir / "strains.tsv"), "--group-column", "family",
                            "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        stores.append(str(store))
    run = work / "run"
    t0 = time.perf_counter()
    if not (run / "fold_pcc_summary.csv").exists():
        subprocess.run([sys.executable, "-m", "hpcsnp", "cv", *stores, "--run", str(run), "--no-progress",
                        *args.cv_args], check=True, stdout=subprocess.DEVNULL)
        print(f"hpcsnp cv {' '.join(args.cv_args)}: {time.perf_counter() - t0:.0f} s")
    summary = pd.read_csv(run / "fold_pcc_summary.csv")
    cols = ["dataset", "model", "pcc_mean", "pcc_sd", "within_group_pcc_mean", "seconds_total"]
    print(summary[[c for c in cols if c in summary]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print()
    print(pd.read_csv(run / "paired_comparison.csv").to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for name in FILES:
        if (run / name / "fold_1" / "seed_predictions.csv").exists():
            gain = seed_gain(run, name, 10)
            print(f"{name}: CNN mean PCC averaging the first 1..{len(gain)} seeds: "
                  + ", ".join(f"{g:.4f}" for g in gain))


if __name__ == "__main__":
    main()
