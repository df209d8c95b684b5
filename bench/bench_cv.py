"""hpcsnp vs the seed reference (../shared/bench/seed_reference.py) on the same data and
folds, in one run: seconds per epoch, training samples/s, saliency samples/s, fold time,
test PCC and peak RSS, with ratios.  The reference is slow (minutes per fold): choose
folds with --folds.

usage: python bench/bench_cv.py DATA.tsv[.gz] [--folds 1,2] [--threads N] [--reference PATH]
       extra hpcsnp train options after --, e.g. -- --batch-size 64 --patience 30
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd, env=None):
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return time.perf_counter() - t0, rss, proc.stdout, proc.stderr


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--folds", default="1")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reference", default=str(ROOT.parent / "shared" / "bench" / "seed_reference.py"))
    a = ap.parse_args(argv)
    import os

    env = dict(os.environ)
    if a.threads:
        for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            env[k] = str(a.threads)
    folds = [int(f) for f in a.folds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="hpcsnp-bench-"))
    store = work / "data.zarr"
    subprocess.run([sys.executable, "-m", "hpcsnp", "ingest", a.data, "-o", str(store), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ref_s, ref_rss, out, _ = timed([sys.executable, a.reference, a.data, "--folds", a.folds], env)
    ref = {int(m[0]): dict(pcc=float(m[1]), epochs=int(m[2]), train=float(m[3]), sal=float(m[4]))
           for m in re.findall(r"fold=(\d+) pcc=([-\d.na]+) epochs=(\d+) train_s=([\d.]+) saliency_s=([\d.]+)", out)}
    rows = []
    for f in folds:
        th = ["--threads", str(a.threads)] if a.threads else []
        wall, rss, _, _ = timed([sys.executable, "-m", "hpcsnp", "train", str(store), "--fold", str(f),
                                 "--run", str(work / "run"), *th, *extra], env)
        m = json.loads((work / "run" / "data" / f"fold_{f}" / "metrics.json").read_text())
        r = ref[f]
        n_train = m["n_train"]
        rows.append((f, r, m, wall, rss, n_train))
    print(f"data {a.data}; folds {a.folds}; hpcsnp options: {' '.join(extra) or '(defaults)'}")
    print(f"reference: whole run {ref_s:.0f}s, peak RSS {ref_rss:.0f} MB")
    hdr = f"{'fold':>4} {'':9} {'pcc':>7} {'epochs':>6} {'s/epoch':>8} {'train/s':>8} {'sal/s':>8} {'train s':>8}"
    print(hdr)
    tot_r = tot_h = 0.0
    for f, r, m, _wall, rss, n in rows:
        r_ep, h_ep = r["train"] / r["epochs"], m["seconds"] / m["epochs"]
        print(f"{f:>4} {'reference':9} {r['pcc']:7.4f} {r['epochs']:6d} {r_ep:8.2f} {n / r_ep:8.0f} "
              f"{m['n_test'] / max(r['sal'], 1e-9):8.0f} {r['train'] + r['sal']:8.1f}")
        print(f"{'':>4} {'hpcsnp':9} {m['pcc']:7.4f} {m['epochs']:6d} {h_ep:8.2f} {n / h_ep:8.0f} "
              f"{m['n_test'] / max(m['saliency_seconds'], 1e-9):8.0f} {m['seconds'] + m['saliency_seconds']:8.1f}"
              f"   peak RSS {rss:.0f} MB")
        print(f"{'':>4} {'ratio':9} {'':7} {'':6} {r_ep / h_ep:7.2f}x {'':8} "
              f"{r['sal'] and (m['n_test'] / m['saliency_seconds']) / (m['n_test'] / r['sal']):7.1f}x "
              f"{(r['train'] + r['sal']) / (m['seconds'] + m['saliency_seconds']):7.2f}x")
        tot_r += r["train"] + r["sal"]
        tot_h += m["seconds"] + m["saliency_seconds"]
    print(f"fold time, all folds run: reference {tot_r:.0f}s, hpcsnp {tot_h:.0f}s, speed-up {tot_r / tot_h:.2f}x")


if __name__ == "__main__":
    main()
