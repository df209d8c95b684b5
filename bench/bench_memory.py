"""Peak memory of one `hpcsnp train` process on synthetic stores of growing size.

Default sizes: 5,000 x 4,236, 50,000 x 4,236 and 100,000 x 50,000 SNPs (a ~5 GB
int8 store that is streamed, never loaded whole).  Each store is written block by
block (hpcsnp.io.simulate.simulate_store); then one `hpcsnp train --fold 1 --epochs 1
--steps-per-epoch S --cache never` runs while a sampler reads /proc/<pid>/status
every 50 ms.  Reported per size: peak VmRSS (the kernel's VmHWM), and the peaks of its
two parts: RssAnon (this process's own heap: tensors, NumPy, Python) and RssFile
(pages of mapped files, mostly TensorFlow's shared libraries, shared between
processes and reclaimable).  Training covers S batches of the streamed store;
prediction of the validation and test folds and saliency of the test fold run whole.

usage: python bench/bench_memory.py [--sizes 5000x4236,50000x4236,100000x50000] [--steps 100]
           [--dir /tmp/hpcsnp-mem] [--threads 2] [-- extra train options]
"""
import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def sample_peaks(pid: int, peaks: dict, stop: threading.Event):
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                        peaks[k] = max(peaks.get(k, 0), int(v.split()[0]) / 1024)
        except (OSError, ValueError):
            pass
        stop.wait(0.05)


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000x4236,50000x4236,100000x50000")
    ap.add_argument("--steps", type=int, default=100, help="training batches per run [100]")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--dir", default="/tmp/hpcsnp-mem")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the stores (they are large)")
    a = ap.parse_args(argv)
    from hpcsnp.io.simulate import simulate_store

    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in a.sizes.split(","):
        n, p = map(int, size.split("x"))
        store = d / f"s{n}x{p}.zarr"
        t0 = time.perf_counter()
        if not store.exists():
            simulate_store(store, samples=n, snps=p, folds=a.folds, missing=0.02)
        sim_s = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
        run = d / f"run{n}x{p}"
        cmd = [sys.executable, "-m", "hpcsnp", "train", str(store), "--fold", "1", "--run", str(run), "--force",
               "--epochs", "1", "--steps-per-epoch", str(a.steps), "--cache", "never",
               "--threads", str(a.threads), *extra]
        peaks, stop = {}, threading.Event()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        th = threading.Thread(target=sample_peaks, args=(proc.pid, peaks, stop), daemon=True)
        th.start()
        _, err = proc.communicate()
        stop.set()
        th.join()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"train failed on {size}:\n{err[-3000:]}")
        m = json.loads((run / store.name[:-5] / "fold_1" / "metrics.json").read_text())
        rows.append(dict(size=f"{n:,} x {p:,}", genotypes_mb=n * p / 2**20, store_disk_mb=disk,
                         simulate_s=sim_s, train_wall_s=wall, steps=a.steps, batch=m["config"]["batch_size"],
                         peak_rss_mb=peaks.get("VmHWM", float("nan")), peak_anon_mb=peaks.get("RssAnon"),
                         peak_file_mb=peaks.get("RssFile"), train_per_s=m["train_samples_per_s"],
                         sal_per_s=m["saliency_samples_per_s"], n_test=m["n_test"]))
        r = rows[-1]
        print(f"{r['size']:>18}: int8 genotypes {r['genotypes_mb']:8.0f} MB (on disk {disk:.0f} MB); "
              f"peak RSS {r['peak_rss_mb']:.0f} MB = anon {r['peak_anon_mb']:.0f} + file {r['peak_file_mb']:.0f} "
              f"(peaks of each); {wall:.0f}s", flush=True)
        if not a.keep:
            import shutil

            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
    import pandas as pd

    t = pd.DataFrame(rows)
    print(t.to_string(index=False, float_format=lambda v: f"{v:.0f}"))
    first, last = rows[0], rows[-1]
    print(f"genotypes grow {last['genotypes_mb'] / first['genotypes_mb']:.0f}x; peak RSS grows "
          f"{last['peak_rss_mb'] - first['peak_rss_mb']:+.0f} MB, its anonymous part "
          f"{last['peak_anon_mb'] - first['peak_anon_mb']:+.0f} MB")


if __name__ == "__main__":
    main()
