"""The preflight's estimate against the task it describes: for each store, what
``hpcsnp cv --dry-run`` predicts for one fold task (memory, an epoch, the CNN's fold, the
baselines), then the task itself, run as slurm/cv_array.sh runs it (``hpcsnp baseline STORE
--fold I`` then ``hpcsnp train STORE --fold I``, each a process of its own, wall time and peak
RSS from wait4), with the run's default settings.

usage:
  python bench/bench_preflight.py STORE [STORE ...] --work DIR [--fold 1] [--threads 2] [--no-baseline]

Writes DIR/preflight.json and prints a Markdown table: estimate, measured, ratio.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import hpcsnp, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--work", required=True)
    ap.add_argument("--fold", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true")
    a = ap.parse_args()

    from hpcsnp.config import Config
    from hpcsnp.run.cv import plan_datasets
    from hpcsnp.run.preflight import Grant, preflight

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    run = work / "run"
    t0 = time.perf_counter()
    plan = preflight(plan_datasets(a.stores), Config(), cpus=a.threads, grant=Grant(cpus=a.threads), run_dir=None,
                     baseline=not a.no_baseline, say=lambda m: print(m, flush=True))
    dry_s = time.perf_counter() - t0
    print("\n".join(plan.lines()), f"\npreflight: {dry_s:.0f} s", flush=True)
    rows = []
    for s, store in zip(plan.stores, a.stores):
        est = {"epoch_s": s.epoch_s, "epochs": s.epochs, "cnn_s": s.cnn_s, "cnn_gb": s.cnn_mem / 2**30,
               "baseline_s": s.baseline_s, "baseline_gb": s.baseline_mem / 2**30}
        got = {}
        if s.baseline:
            r = timed(hpcsnp("baseline", store, "--fold", a.fold, "--run", run, "--force", "--threads", a.threads),
                      work / f"{s.name}-baseline.log")
            got.update(baseline_s=r["seconds"], baseline_gb=r["peak_rss_gb"])
        r = timed(hpcsnp("train", store, "--fold", a.fold, "--run", run, "--force", "--threads", a.threads),
                  work / f"{s.name}-train.log")
        m = json.loads((run / s.name / f"fold_{a.fold}" / "metrics.json").read_text())
        got.update(cnn_s=r["seconds"], cnn_gb=r["peak_rss_gb"], epochs=m["epochs"],
                   epoch_s=statistics.median(m["epoch_seconds"][1:] or m["epoch_seconds"]))
        rows.append({"store": s.name, "estimate": est, "measured": got, "preflight_seconds": dry_s})
        (work / "preflight.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nfold {a.fold}, {a.threads} threads\n")
    print("| data | quantity | estimate | measured | estimate / measured |\n|---|---|---|---|---|")
    for row in rows:
        for k, v in row["measured"].items():
            e = row["estimate"][k]
            print(f"| {row['store']} | {k} | {e:.2f} | {v:.2f} | {e / v:.2f} |")


if __name__ == "__main__":
    main()
