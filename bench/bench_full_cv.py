"""Full cross-validation, hpcsnp vs the seed reference, in one run on the same machine.

For each data set (default: SoyNAM height imputed and QA) it times
  1. `hpcsnp ingest` of the text file,
  2. `hpcsnp cv` on every fold of every data set with its defaults (CNN, saliency, the
     four baselines, the ensemble, reduce; extra cv options after --), and
  3. the reference (../shared/bench/seed_reference.py: Keras generator, batch 4, per-sample
     saliency, uncut) on --reference-folds of --reference-data.  The reference runs on a
     z-scored copy of the phenotype (the whole file's mean and sd): on raw centimetres its
     ISRU output saturates and it learns nothing.  hpcsnp standardises the target with the
     training folds' mean and sd itself, so its predictions of the raw file are the same
     affine map of the z-scored file's and its PCC is the same.  Each reference fold runs as
     a process of its own pinned to one core with one thread, as many at a time as there
     are cores: the arrangement hpcsnp's folds run in, and the reference's fastest here.

Then it prints
  * where the time of hpcsnp's folds went (the profile): per data set, the early-stopped
    training (its patience epochs apart), the refit, prediction and attributions, the rest
    of each fold process (start-up, model saving, outputs), and each baseline;
  * per fold: PCC, epochs, seconds, samples/s, saliency samples/s, achieved GFLOP/s against
    the machine's fp32 peak, peak RSS;
  * the reference against hpcsnp on the folds both ran (time, PCC, the ratio at equal or
    better PCC) and the full CV extrapolated from the reference's mean fold time.

usage: python bench/bench_full_cv.py [--data-dir ../shared/data/soynam] [--datasets height_imp,height_qa]
           [--reference-data height_qa] [--reference-folds 1,2] [--skip-reference] [--work DIR]
           [--flops-per-cycle 32] [-- hpcsnp cv options]
       python bench/bench_full_cv.py --analyse DIR [--cv-seconds S]   (the tables again, from a finished DIR)
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = "timings.json"
REF_LINE = re.compile(r"fold=(\d+) pcc=([-\d.na]+) epochs=(\d+) train_s=([\d.]+) saliency_s=([\d.]+)")


def _start(cmd, env=None, cpu=None, cwd=None):
    """The command under GNU time (peak RSS on stderr's last line); ``cpu``: pinned to that core."""
    return subprocess.Popen(["/usr/bin/time", "-f", "%M", *map(str, cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)


def timed(cmd, env=None, log=None):
    """Wall seconds, peak RSS (MB, largest process of the tree, GNU time) and stdout of a command."""
    t0 = time.perf_counter()
    return _finish(_start(cmd, env), t0, cmd, log)


def _finish(proc, t0, cmd, log):
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if log:
        Path(log).write_text(out + err)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{err[-3000:]}")
    rss = int(err.strip().splitlines()[-1]) / 1024
    return seconds, rss, out


def machine_peak(flops_per_cycle: int) -> tuple[float, str]:
    """fp32 peak GFLOP/s of the cores this process may use: cores x clock x FLOP/cycle/core."""
    cores = len(os.sched_getaffinity(0))
    info = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip().lower(), value.strip())
    mhz = float(info.get("cpu mhz") or 2000.0)
    peak = cores * mhz / 1e3 * flops_per_cycle
    # the CPU named: a virtual machine's host, and so its speed, can differ from one day to the next
    flags = set(info.get("flags", "").split())
    bf16 = "+".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no bfloat16 arithmetic"
    return peak, (f"{info.get('model name', 'unknown CPU')} ({bf16}): {cores} cores x {mhz / 1e3:.2f} GHz x "
                  f"{flops_per_cycle} fp32 FLOP/cycle")


def zscored_copy(src: Path, dst: Path) -> Path:
    """The text file with its phenotype column z-scored over every line (mean 0, sd 1)."""
    df = pd.read_csv(src, sep="\t", dtype=str)
    y = df.iloc[:, 1].astype(float)
    df.iloc[:, 1] = ((y - y.mean()) / y.std(ddof=0)).map(lambda v: f"{v:.6f}")
    df.to_csv(dst, sep="\t", index=False)
    return dst


def run_reference(script: str, data: Path, folds: list[int], work: Path) -> dict:
    """Each fold a process pinned to its own core with one thread, as many at once as there
    are cores; returns {fold: dict(pcc, epochs, train, sal, wall, rss)}."""
    cpus = sorted(os.sched_getaffinity(0))
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out, todo = {}, list(folds)
    while todo:
        batch, todo = todo[:len(cpus)], todo[len(cpus):]
        cmds = {f: [sys.executable, script, data, "--folds", f] for f in batch}
        t0 = time.perf_counter()
        procs = {f: _start(cmds[f], env, cpu) for cpu, f in zip(cpus, batch)}
        with ThreadPoolExecutor(len(procs)) as pool:  # each fold's wall time ends when it does
            done = {f: pool.submit(_finish, p, t0, cmds[f], work / f"reference_fold{f}.log") for f, p in procs.items()}
        for f, fut in done.items():
            wall, rss, text = fut.result()
            for m in REF_LINE.findall(text):
                out[int(m[0])] = dict(pcc=float(m[1]), epochs=int(m[2]), train=float(m[3]), sal=float(m[4]),
                                      wall=wall, rss=rss)
            print(f"reference fold {f}: {wall:.0f}s wall, peak RSS {rss:.0f} MB", flush=True)
    return out


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "soynam"))
    ap.add_argument("--datasets", default="height_imp,height_qa")
    ap.add_argument("--reference-data", default="height_qa", help="the data set the reference runs on [height_qa]")
    ap.add_argument("--reference-folds", default="1,2", help="folds the reference runs [1,2]")
    ap.add_argument("--reference", default=str(ROOT.parent / "shared" / "bench" / "seed_reference.py"))
    ap.add_argument("--skip-reference", action="store_true", help="hpcsnp only (no ratios)")
    ap.add_argument("--reference-only", action="store_true",
                    help="the reference alone, into a --work DIR whose hpcsnp part has finished")
    ap.add_argument("--work", default=None)
    ap.add_argument("--analyse", metavar="DIR", help="print the tables of a finished DIR; runs nothing")
    ap.add_argument("--cv-seconds", type=float, help="with --analyse: cv's wall time, where DIR has no timings.json")
    ap.add_argument("--flops-per-cycle", type=int, default=32,
                    help="fp32 FLOP per cycle per core: 32 = AVX-512 on two 256-bit FMA pipes (AMD Zen 4), "
                         "64 = two 512-bit FMA units (Intel Xeon Gold/Platinum) [32]")
    a = ap.parse_args(argv)
    if a.analyse:
        return analyse(Path(a.analyse), a.flops_per_cycle, a.cv_seconds)
    work = Path(a.work or tempfile.mkdtemp(prefix="hpcsnp-fullcv-"))
    work.mkdir(parents=True, exist_ok=True)
    names = a.datasets.split(",")
    files = {n: Path(a.data_dir) / f"{n}.tsv.gz" for n in names}
    print(f"work dir {work}; hpcsnp cv options: {' '.join(extra) or '(defaults)'}", flush=True)
    if not a.skip_reference and not Path(a.reference).exists():
        sys.exit(f"the reference {a.reference} does not exist: give --reference PATH, or --skip-reference")
    if a.reference_only:
        timings = json.loads((work / TIMINGS).read_text())
    else:
        timings = run_hpcsnp(work, names, files, extra)
    if not a.skip_reference:
        data = zscored_copy(Path(a.data_dir) / f"{a.reference_data}.tsv.gz", work / f"{a.reference_data}_z.tsv")
        ref = run_reference(a.reference, data, [int(f) for f in a.reference_folds.split(",")], work)
        timings["reference"] = {"data": a.reference_data, "folds": {str(k): v for k, v in ref.items()},
                                "date": time.strftime("%Y-%m-%d %H:%M")}
        (work / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n")
    analyse(work, a.flops_per_cycle)


def run_hpcsnp(work: Path, names: list[str], files: dict, extra: list[str]) -> dict:
    """Ingest every file and run `hpcsnp cv` of all of them; their times (also in timings.json)."""
    py = sys.executable
    timings = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": os.uname().nodename, "cv_options": extra,
               "ingest": {}}
    for n, f in files.items():
        s, rss, _ = timed([py, "-m", "hpcsnp", "ingest", f, "-o", work / f"{n}.zarr", "--force", "--no-progress"])
        timings["ingest"][n] = {"seconds": s, "rss_mb": rss, "bytes": f.stat().st_size}
    cv_s, cv_rss, _ = timed([py, "-m", "hpcsnp", "cv", *[work / f"{n}.zarr" for n in names], "--run", work / "run",
                             "--no-progress", "--force", *extra], log=work / "hpcsnp_cv.log")
    timings.update(cv_seconds=cv_s, cv_rss_mb=cv_rss)
    print(f"hpcsnp cv: {cv_s:.0f}s wall", flush=True)
    (work / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n")
    return timings


def fold_profile(run: Path, names: list[str]) -> pd.DataFrame:
    """Seconds of each part of every CNN fold and baseline (one row per data set and fold)."""
    rows = []
    for n in names:
        for d in sorted((run / n).glob("fold_*/metrics.json"), key=lambda p: int(p.parent.name[5:])):
            m = json.loads(d.read_text())
            members = m.get("seed_runs") or [{"epochs": m["epochs"], "best_epoch": m["best_epoch"],
                                              "seconds": m["seconds"]}]
            stopped = refit = patience = 0.0
            for k, r in enumerate(members):
                if "refit_seconds" in r:
                    rs = r["refit_seconds"]
                elif k == 0 and m.get("refit"):
                    rs = m["refit"]["seconds"]
                else:  # older metrics: split by lines x epochs trained
                    ref_epochs = r["best_epoch"] if m.get("refit") else 0
                    work_stopped = r["epochs"] * m["n_train"]
                    work_refit = ref_epochs * (m["n_train"] + m["n_val"])
                    rs = r["seconds"] * work_refit / (work_stopped + work_refit)
                refit += rs
                stopped += r["seconds"] - rs
                patience += (r["seconds"] - rs) * (r["epochs"] - r["best_epoch"]) / max(r["epochs"], 1)
            attributions = sum((m.get("attribution_seconds") or {"saliency": m["saliency_seconds"]}).values())
            predict = m["n_test"] / max(m["predict_samples_per_s"], 1e-9)  # every model's test predictions
            row = {"dataset": n, "fold": m["fold"], "models": m["models"], "early_stopped_s": stopped - patience,
                   "patience_s": patience, "refit_s": refit, "predict_s": predict, "attributions_s": attributions,
                   "rest_s": m["total_seconds"] - m["seconds"] - attributions - predict,
                   "cnn_total_s": m["total_seconds"], "bf16": m.get("bf16", False)}
            for b in sorted((run / n).glob(f"baseline_*/fold_{m['fold']}/metrics.json")):
                bm = json.loads(b.read_text())
                row[f"{bm['model']}_s"] = bm["seconds"]
            rows.append(row)
    return pd.DataFrame(rows)


def analyse(work: Path, flops_per_cycle: int, cv_seconds: float | None = None) -> None:
    run = work / "run"
    timings = json.loads((work / TIMINGS).read_text()) if (work / TIMINGS).exists() else {}
    cv_s = timings.get("cv_seconds", cv_seconds)
    log = pd.read_csv(run / "fold_pcc_log.csv")
    names = list(dict.fromkeys(log.dataset))
    metrics = {(n, i): json.loads((run / n / f"fold_{i}" / "metrics.json").read_text())
               for n in names for i in sorted(set(log[(log.dataset == n)].fold))}
    peak, how = machine_peak(flops_per_cycle)
    print(f"\n== hpcsnp full CV{' vs reference' if 'reference' in timings else ''}, "
          f"{timings.get('date', '(date not recorded)')} on {timings.get('host', os.uname().nodename)}; "
          f"fp32 peak {peak:.0f} GFLOP/s ({how}) ==")
    any_m = next(iter(metrics.values()))
    fl = any_m["mflop_per_sample"]
    print(f"model FLOPs per sample: forward {fl['forward']:.1f} M, training step {fl['train_step']:.1f} M "
          f"({fl.get('train_step_fused', fl['train_step']):.1f} M as run, fused), saliency {fl['saliency']:.1f} M")
    for n, r in timings.get("ingest", {}).items():
        print(f"ingest {n}: {r['bytes'] / 1e6:.1f} MB gzip text in {r['seconds']:.1f}s, peak RSS {r['rss_mb']:.0f} MB")

    prof = fold_profile(run, names)
    parts = [c for c in prof.columns if c.endswith("_s") and c != "cnn_total_s"]
    print("\nwhere the time went (core-seconds, summed over each data set's folds; a fold process has one core):")
    by = prof.groupby("dataset")[parts + ["cnn_total_s"]].sum()
    by.loc["all"] = by.sum()
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(by.to_string(float_format=lambda v: f"{v:.0f}"))
    total = by.loc["all", parts].sum()
    print("share: " + ", ".join(f"{c.removesuffix('_s')} {100 * by.loc['all', c] / total:.0f} %" for c in parts))
    prof.to_csv(work / "profile.csv", index=False)

    rows = []
    for (n, i), m in metrics.items():
        g = log[(log.dataset == n) & (log.fold == i)].set_index("model")
        base = g.loc[[x for x in g.index if x.startswith("gblup_")], "pcc"]
        threads = m["threads"]
        rows.append({
            "dataset": n, "fold": i, "cnn_pcc": m["pcc"], "epochs": m["epochs"],
            "fold_s": m["total_seconds"], "s_per_epoch": float(np.median(m.get("epoch_seconds") or [np.nan])),
            "train_per_s": m["train_samples_per_s"], "train_gflops": m["train_gflops"],
            "pct_peak_core": 100 * m["train_gflops"] / (peak / len(os.sched_getaffinity(0)) * threads),
            "equiv_gflops": m.get("train_gflops_model_equivalent", m["train_gflops"]),
            "sal_per_s": m["saliency_samples_per_s"], "rss_mb": m.get("peak_rss_mb"),
            "gblup_best": base.max() if len(base) else np.nan,
            "ensemble_pcc": g["pcc"].get("ensemble", np.nan),
        })
    t = pd.DataFrame(rows)
    print()
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(t.to_string(index=False, float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"))
    wall = f"{cv_s:.0f}s wall ({cv_s / 60:.1f} min)" if cv_s else "wall time not recorded"
    print(f"\nhpcsnp cv, {len(names)} data sets x all folds, with saliency, baselines, ensemble and reduce: {wall}, "
          f"largest process {timings.get('cv_rss_mb', float('nan')):.0f} MB")
    s = pd.read_csv(run / "fold_pcc_summary.csv")
    print(s[["dataset", "model", "n_folds", "pcc_mean", "pcc_sd", "seconds_total"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))

    ref = timings.get("reference")
    if ref:
        rn = ref["data"]
        print(f"\nreference on {rn} (phenotype z-scored), each fold one process on one core, uncut:")
        lines, ratios = [], []
        for f, r in sorted(ref["folds"].items(), key=lambda kv: int(kv[0])):
            m = metrics[(rn, int(f))]
            ens = t[(t.dataset == rn) & (t.fold == int(f))].ensemble_pcc.iloc[0]
            ref_s, ours = r["train"] + r["sal"], m["total_seconds"]
            ratios.append(ref_s / ours)
            lines.append({"fold": int(f), "ref_pcc": r["pcc"], "ref_epochs": r["epochs"], "ref_s": ref_s,
                          "ref_rss_mb": r["rss"], "cnn_pcc": m["pcc"], "ensemble_pcc": ens, "cnn_fold_s": ours,
                          "ratio": ref_s / ours, "cnn_pcc_at_least_ref": m["pcc"] >= r["pcc"]})
        print(pd.DataFrame(lines).to_string(index=False, float_format=lambda v: f"{v:.3f}" if abs(v) < 10
                                            else f"{v:.0f}"))
        n_folds = len(metrics)
        cores = len(os.sched_getaffinity(0))
        ref_mean = float(np.mean([r["train"] + r["sal"] for r in ref["folds"].values()]))
        est = ref_mean * n_folds / cores
        refits = "their refits, " if any_m.get("refit") or any(r.get("refit_epochs") for r in
                                                                any_m.get("seed_runs", [])) else ""
        print(f"per fold: hpcsnp's CNN fold (its {any_m['models']} models, {refits}predictions and attributions) "
              f"{np.mean(ratios):.1f}x faster than the reference's fold (mean of {len(ratios)})")
        if cv_s:
            print(f"full CV of {n_folds} folds on {cores} cores: reference ~{est:.0f}s (its mean fold x {n_folds} / "
                  f"{cores}, extrapolated; CNN only, no baseline or ensemble), hpcsnp {cv_s:.0f}s measured "
                  f"(everything) -> {est / cv_s:.1f}x")
    t.to_csv(work / "bench_full_cv.csv", index=False)
    print(f"tables: {work / 'bench_full_cv.csv'}, {work / 'profile.csv'}")


if __name__ == "__main__":
    main()
