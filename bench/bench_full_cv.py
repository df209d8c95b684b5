"""Full cross-validation, hpcsnp vs the seed reference, in one run on the same machine.

For each data set (default: SoyNAM height imputed and QA) it times
  1. the reference (../shared/bench/seed_reference.py: Keras generator, batch 4,
     per-sample saliency) on --reference-folds (all folds take hours; the full-CV
     time is extrapolated as mean fold time x K, and said so),
  2. `hpcsnp ingest` of the same text file, and
  3. `hpcsnp cv` on every fold of every data set, with saliency, the GBLUP baseline
     and the ensemble (its defaults; extra cv options after --),
then prints per fold: PCC, epochs, seconds, samples/s, saliency samples/s, achieved
GFLOP/s against the machine's fp32 peak, peak RSS, and the ratios.

usage: python bench/bench_full_cv.py [--data-dir ../shared/data/soynam] [--datasets height_imp,height_qa]
           [--reference-folds 1] [--work DIR] [--flops-per-cycle 32] [-- hpcsnp cv options]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, env=None, log=None):
    """Wall seconds and peak RSS (MB, largest process of the tree, GNU time) of a command."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *map(str, cmd)], capture_output=True, text=True, env=env)
    if log:
        Path(log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{proc.stderr[-3000:]}")
    rss = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return time.perf_counter() - t0, rss, proc.stdout


def machine_peak(flops_per_cycle: int) -> tuple[float, str]:
    """fp32 peak GFLOP/s of the cores this process may use: cores x clock x FLOP/cycle/core."""
    cores = len(os.sched_getaffinity(0))
    mhz = None
    for line in open("/proc/cpuinfo"):
        if line.lower().startswith("cpu mhz"):
            mhz = float(line.split(":")[1])
            break
    mhz = mhz or 2000.0
    peak = cores * mhz / 1e3 * flops_per_cycle
    return peak, f"{cores} cores x {mhz / 1e3:.2f} GHz x {flops_per_cycle} fp32 FLOP/cycle"


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "soynam"))
    ap.add_argument("--datasets", default="height_imp,height_qa")
    ap.add_argument("--reference-folds", default="1", help="folds the reference runs, per data set [1]")
    ap.add_argument("--reference", default=str(ROOT.parent / "shared" / "bench" / "seed_reference.py"))
    ap.add_argument("--skip-reference", action="store_true", help="hpcsnp only (no ratios)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--flops-per-cycle", type=int, default=32,
                    help="fp32 FLOP per cycle per core: 32 = AVX-512 on two 256-bit FMA pipes (AMD Zen 4), "
                         "64 = two 512-bit FMA units (Intel Xeon Gold/Platinum) [32]")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="hpcsnp-fullcv-"))
    work.mkdir(parents=True, exist_ok=True)
    names = a.datasets.split(",")
    files = {n: Path(a.data_dir) / f"{n}.tsv.gz" for n in names}
    py = sys.executable
    print(f"work dir {work}; hpcsnp cv options: {' '.join(extra) or '(defaults)'}", flush=True)

    ingest = {}
    for n, f in files.items():
        store = work / f"{n}.zarr"
        s, rss, _ = timed([py, "-m", "hpcsnp", "ingest", f, "-o", store, "--force", "--no-progress"])
        ingest[n] = (s, rss, f.stat().st_size)

    run = work / "run"
    cv_s, cv_rss, _ = timed([py, "-m", "hpcsnp", "cv", *[work / f"{n}.zarr" for n in names], "--run", run,
                             "--no-progress", "--force", *extra], log=work / "hpcsnp_cv.log")
    print(f"hpcsnp cv: {cv_s:.0f}s wall", flush=True)
    ref = {}
    if not a.skip_reference:
        for n, f in files.items():
            s, rss, out = timed([py, a.reference, f, "--folds", a.reference_folds], log=work / f"reference_{n}.log")
            for m in re.findall(r"fold=(\d+) pcc=([-\d.na]+) epochs=(\d+) train_s=([\d.]+) saliency_s=([\d.]+)", out):
                ref[(n, int(m[0]))] = dict(pcc=float(m[1]), epochs=int(m[2]), train=float(m[3]), sal=float(m[4]),
                                           rss=rss)
            print(f"reference {n} folds {a.reference_folds}: {s:.0f}s wall, peak RSS {rss:.0f} MB", flush=True)

    log = pd.read_csv(run / "fold_pcc_log.csv")
    metrics = {(n, i): json.loads((run / n / f"fold_{i}" / "metrics.json").read_text())
               for n in names for i in sorted(set(log[(log.dataset == n)].fold))}
    peak, how = machine_peak(a.flops_per_cycle)

    print(f"\n== hpcsnp vs reference, {time.strftime('%Y-%m-%d %H:%M')} on {os.uname().nodename}; "
          f"fp32 peak {peak:.0f} GFLOP/s ({how}) ==")
    any_m = next(iter(metrics.values()))
    fl = any_m["mflop_per_sample"]
    print(f"model FLOPs per sample ({any_m['n_train'] and 'N = ' + str(len(pd.read_csv(run / names[0] / 'variants.csv')))}"  # noqa: E501
          f" SNPs): forward {fl['forward']:.1f} M, training step {fl['train_step']:.1f} M "
          f"({fl.get('train_step_fused', fl['train_step']):.1f} M as run, fused), "
          f"saliency {fl['saliency']:.1f} M")
    for n, (s, rss, size) in ingest.items():
        print(f"ingest {n}: {size / 1e6:.1f} MB gzip text in {s:.1f}s, peak RSS {rss:.0f} MB")
    rows = []
    for (n, i), m in metrics.items():
        g = log[(log.dataset == n) & (log.fold == i)].set_index("model")
        base = g.loc[[x for x in g.index if x.startswith("gblup_")], "pcc"]
        r = ref.get((n, i))
        threads = m["threads"]
        rows.append({
            "dataset": n, "fold": i,
            "ref_pcc": r and r["pcc"], "ref_epochs": r and r["epochs"],
            "ref_fold_s": r and r["train"] + r["sal"], "ref_sal_per_s": r and m["n_test"] / max(r["sal"], 1e-9),
            "cnn_pcc": m["pcc"], "epochs": m["epochs"], "fold_s": m["seconds"] + m["saliency_seconds"],
            "s_per_epoch": m["seconds"] / m["epochs"], "train_per_s": m["train_samples_per_s"],
            "train_gflops": m["train_gflops"],
            "pct_peak_core": 100 * m["train_gflops"] / (peak / len(os.sched_getaffinity(0)) * threads),
            # the published model's FLOPs per sample x samples/s (= train_gflops when not fused)
            "equiv_gflops": m.get("train_gflops_model_equivalent", m["train_gflops"]),
            "sal_per_s": m["saliency_samples_per_s"], "sal_gflops": m["saliency_gflops"],
            "threads": threads, "rss_mb": m.get("peak_rss_mb"),
            "gblup_best": base.max() if len(base) else np.nan,
            "gblup_s": sum(json.loads((run / n / f"baseline_{b.removeprefix('gblup_')}" / f"fold_{i}" /
                                       "metrics.json").read_text())["seconds"] for b in base.index),
            "ensemble_pcc": g["pcc"].get("ensemble", np.nan),
        })
    t = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(t.to_string(index=False, float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"))

    print(f"\nhpcsnp cv, {len(names)} data sets x all folds, with saliency, baseline and ensemble: "
          f"{cv_s:.0f}s wall, largest process {cv_rss:.0f} MB")
    s = pd.read_csv(run / "fold_pcc_summary.csv")
    print(s[["dataset", "model", "n_folds", "pcc_mean", "pcc_sd", "seconds_total"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    if ref:
        est = 0.0
        for n in names:
            k = int(log[log.dataset == n].fold.max())
            fold_s = [ref[(n, i)]["train"] + ref[(n, i)]["sal"] for (d, i) in ref if d == n]
            est += np.mean(fold_s) * k
            print(f"reference {n}: {len(fold_s)} fold(s) timed, mean {np.mean(fold_s):.0f}s per fold -> "
                  f"{np.mean(fold_s) * k:.0f}s for {k} folds (extrapolated)")
        print(f"full CV: reference ~{est:.0f}s (extrapolated), hpcsnp {cv_s:.0f}s measured -> "
              f"speed-up {est / cv_s:.1f}x")
        both = t.dropna(subset=["ref_pcc"])
        print("PCC on the folds both ran: reference " + ", ".join(f"{x:.3f}" for x in both.ref_pcc)
              + " | hpcsnp CNN " + ", ".join(f"{x:.3f}" for x in both.cnn_pcc)
              + " | hpcsnp ensemble " + ", ".join(f"{x:.3f}" for x in both.ensemble_pcc))
        print(f"saliency samples/s: reference {both.ref_sal_per_s.mean():.0f}, hpcsnp {both.sal_per_s.mean():.0f}")
    t.to_csv(work / "bench_full_cv.csv", index=False)
    print(f"table: {work / 'bench_full_cv.csv'}")


if __name__ == "__main__":
    main()
