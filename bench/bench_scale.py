"""Scale benchmark: every step that must run at 100,000 lines x 50,000 SNPs, and the scalable
linear path's accuracy where the exact one still fits.

``steps``: simulate PLINK (``hpcsnp simulate --plink``, NAM families with LD blocks), ingest it,
``gwas``, the linear baseline of one fold, the GBLUP refit on every line with the prediction of
every line (the linear part of ``hpcsnp predict``, as new lines: ``refitted`` in the run the
baseline step writes, so with the variance ratio of the folds there, as ``predict`` takes it),
the CNN part of ``predict`` (a default 5-fold run's models, untrained, predicting
``--predict-lines`` lines in one compiled call as ``predict`` runs them, scaled to every
line), and one CNN epoch of
``--steps-per-epoch`` steps.  Each step runs as its own process; wall time and peak RSS (from
wait4's rusage) are recorded, with the solver each linear step chose (``--solver auto``
decides by the memory this machine grants) and its conjugate-gradient iterations.

``accuracy``: per fold of each store, the GBLUP baseline by the exact and by the scalable
solver (PCC and their difference), and the GWAS's -log10 p by both (Spearman).  Stores
above REML_LINES lines also get delta from a sample of lines on the scalable path.

usage:
  python bench/bench_scale.py steps --samples 100000 --snps 50000 --work DIR [--steps-per-epoch 20]
           [--only simulate,ingest,gwas,baseline,refit,cnn_predict,epoch] [--threads 2]
  python bench/bench_scale.py accuracy STORE [STORE ...] [--encodings dosage,onehot] [--folds 1,2]
  python bench/bench_scale.py loco STORE --causal TRUTH.tsv --work DIR [--h2 0.5] [--polygenic N]
           [--solvers exact,scalable] [--tests whole,loco] [--replicates R]
  python bench/bench_scale.py passes STORE [--encodings dosage,onehot] [--systems 2,17] [--wide 220] [--threads 2]
           [--workers 2]
  python bench/bench_scale.py search STORE [--encodings dosage,onehot] [--reml-lines 2000,8000] [--folds 1]
  python bench/bench_scale.py tolerance STORE --encoding onehot --h2 0.981 [--tolerances 1e-3,...,1e-10]
           [--offsets 0,0.02,0.05,...]
  python bench/bench_scale.py folds-reml STORE [STORE ...] [--encodings dosage,onehot]

``passes``: the time of one pass of the scalable solver over the genotypes (Z' M Z U, as each
conjugate-gradient iteration runs it) per encoding and number of systems, each the best of
``--repeat`` (the store read from disk on every pass, as at scale); ``--wide K`` also the
eigenpairs' float32 passes with K columns (Z U, then Z' V); ``--workers N`` also each pass on a
local distributed cluster of N one-thread worker processes, with its largest difference from the
threads' result (relative to the result's largest entry).

``loco``: the GWAS's inflation without structure, exact and scalable, with and without LOCO,
on a trait whose causal loci lie on the odd-numbered chromosomes (lambda over the even ones'
SNPs, null under LOCO), and the scalable LOCO test's Spearman with the exact one.  The causal
loci are the truth table's on those chromosomes, or with ``--polygenic N`` N SNPs drawn from
them with normal effects (a trait closer to the infinitesimal model the test assumes);
``--null-chromosomes 10`` puts them on every chromosome but those.  The null SNPs lie in LD
blocks, so one trait's lambda over them is noisy (a few hundred independent tests); ``--replicates
R`` draws R traits (new causal SNPs with ``--polygenic``, new noise) and reports lambda's mean and
sd over them, lambda of the pooled null statistics and their mean chi^2.

``search``: the scalable GBLUP fold alone with REML on ``--reml-lines`` sampled fitting lines
(fewer than the default 8,000 start Monte Carlo REML further from its root, as 8,000 of
80,000 do at 100,000 lines): wall time, passes over the genotypes, Monte Carlo REML
evaluations, the final solve's iterations, h2 and the test PCC.

``tolerance``: fold 1's GBLUP (test and validation systems) at a fixed ``--h2``, solved to each
of ``--tolerances`` in turn (each solve continued from the last): iterations, test PCC and the
largest change of a prediction against the last (tightest) solve, over the predictions' SD.
With ``--offsets``: instead, solved to 1e-6 at deltas that many units of log delta from
``--h2``'s, predictions against the first offset's (what a stopping step of the search moves).

``folds-reml``: exact REML's variance ratio on each fold's fitting lines against REML on every
line (where ``predict``'s scalable refit starts its search: the folds' geometric mean).

Writes DIR/scale.json (steps) and prints a Markdown table.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

REFIT = """
import json, logging, sys, time
import numpy as np
from hpcsnp.linear.refit import refitted
from hpcsnp.resources import cap_threads, dask_context
from hpcsnp.rundir import RunDir, bound_to, dataset_name
from hpcsnp.store import open_store, row_chunks
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the solver's stages, to the log
cap_threads(int(sys.argv[2]))
store, encoding, run = open_store(sys.argv[1]), sys.argv[3], RunDir(sys.argv[4])
if not any(bound_to(d, store) for d in run.datasets()):
    run.write_dataset_info(dataset_name(store, None), store)
ds = next(d for d in run.datasets() if bound_to(d, store))
for name in ("refit_all.npz", "refit_all.json"):  # predict's cache: refitted afresh
    (run.baseline_cache(ds.dataset, encoding) / name).unlink(missing_ok=True)
t0 = time.perf_counter()
with dask_context("threads", int(sys.argv[2])):
    fit = refitted(run, ds, store, encoding)
t1 = time.perf_counter()
pred = np.concatenate([fit.predict(g) for _, _, g in row_chunks(store)])
pcc = float(np.corrcoef(pred, store.phenotype)[0, 1])
record = json.loads((run.baseline_cache(ds.dataset, encoding) / "refit_all.json").read_text())
print(json.dumps({"refit_seconds": t1 - t0, "predict_seconds": time.perf_counter() - t1, "lines": len(pred),
                  "h2": 1 / (1 + fit.delta), "training_pcc": pcc,
                  **{k: record.get(k) for k in ("h2_from", "mc_reml_evaluations", "cg_iterations", "passes")}}))
"""

CNN_PREDICT = """
import json, sys, time
import numpy as np
from hpcsnp.config import Config
from hpcsnp.resources import configure_tensorflow
from hpcsnp.store import open_store, row_chunks
configure_tensorflow(int(sys.argv[2]))
import tensorflow as tf
from hpcsnp.cnn.data import one_hot
from hpcsnp.cnn.model import build_model
from hpcsnp.cnn.steps import eval_batch_size
store, folds = open_store(sys.argv[1]), int(sys.argv[3])
cfg = Config()
n_train = int(store.n_samples * (folds - 2) / folds)
models = [build_model(store.n_variants, cfg.replace(seed=i), np.zeros(store.n_variants, np.float32))
          for i in range(folds * cfg.models_per_fold(n_train))]
batch = eval_batch_size(cfg, store.n_variants)
@tf.function(input_signature=(tf.TensorSpec((None, store.n_variants), tf.int8),), autograph=False)
def predict(g):  # as hpcsnp.run.predict.FoldModels: every model in one compiled call
    x = one_hot(g)
    return tf.stack([m(x, training=False)[:, 0] for m in models])
limit = int(sys.argv[4]) if len(sys.argv) > 4 else store.n_samples
predict(np.zeros((batch, store.n_variants), np.int8))  # traced before the clock starts
t0 = time.perf_counter()
lines = 0
for _, _, g in row_chunks(store):
    g = g[:limit - lines]
    for s in range(0, len(g), batch):
        predict(g[s:s + batch]).numpy()
    lines += len(g)
    if lines >= limit:
        break
seconds = time.perf_counter() - t0
print(json.dumps({"cnn_models": len(models), "lines": lines, "batch": batch, "cnn_predict_seconds": seconds,
                  "every_line_seconds": seconds * store.n_samples / lines}))
"""


def timed(cmd, log: Path, env=None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (GB) and exit status, from wait4's rusage."""
    from hpcsnp.run.preflight import run_timed

    seconds, rss, rc = run_timed(cmd, log, env)
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(rss / 2**30, 2), "rc": rc, "log": str(log)}


def hpcsnp(*args):
    return [sys.executable, "-m", "hpcsnp", *args]


def steps(a):
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    prefix, store, run = work / "scale", work / "scale.zarr", work / "run"
    wanted = a.only.split(",")
    out_path = work / "scale.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("size", {"samples": a.samples, "snps": a.snps, "threads": a.threads})
    t = ["--threads", str(a.threads)]
    plan = {
        "simulate": hpcsnp("simulate", prefix, "--plink", "--samples", a.samples, "--snps", a.snps, "--causal", 200,
                           "--missing", 0.01, "--families", 40, "--no-progress"),
        "ingest": hpcsnp("ingest", "--bfile", prefix, "--pheno", f"{prefix}.pheno.tsv", "-o", store, "--force",
                         "--no-progress"),
        "gwas": hpcsnp("gwas", store, "-o", work / "gwas", "--solver", a.solver, "--no-progress", *t),
        "baseline": hpcsnp("baseline", store, "--run", run, "--fold", 1, "--encoding", a.encoding, "--force",
                           "--solver", a.solver, *t),
        "refit": [sys.executable, "-c", REFIT, store, a.threads, a.encoding, run],
        "cnn_predict": [sys.executable, "-c", CNN_PREDICT, store, a.threads, 5, a.predict_lines],
        "epoch": hpcsnp("train", store, "--fold", 1, "--run", work / "train", "--epochs", 1, "--models-per-fold", 1,
                        "--no-refit", "--steps-per-epoch", a.steps_per_epoch, "--force", *t),
    }
    for name, cmd in plan.items():
        if name not in wanted:
            continue
        print(f"== {name}: {' '.join(map(str, cmd[2:] if cmd[1] == '-m' else cmd[:2]))}", flush=True)
        key = f"{name}_{a.encoding}" if name in ("baseline", "refit") and a.encoding != "dosage" else name
        r = timed(cmd, work / f"{key}.log")
        if name == "gwas" and r["rc"] == 0:
            g = json.loads((work / "gwas" / "gwas.json").read_text())
            r.update({k: g.get(k) for k in ("solver", "cg_iterations", "passes", "lambda_gc", "h2_reml", "rank")})
        if name == "baseline" and r["rc"] == 0:
            m = json.loads((run / "scale" / f"baseline_{a.encoding}" / "fold_1" / "metrics.json").read_text())
            r.update({k: m.get(k) for k in ("solver", "cg_iterations", "passes", "pcc", "h2_reml", "reml_lines")})
        if name in ("refit", "cnn_predict") and r["rc"] == 0:
            r.update(json.loads((work / f"{key}.log").read_text().strip().splitlines()[-1]))
        results[key] = r
        out_path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(r), flush=True)
        if r["rc"] != 0:
            print(f"{name} failed: see {r['log']}", flush=True)
            break
    print(f"\n{a.samples:,} lines x {a.snps:,} SNPs, {a.threads} threads\n")
    print("| step | wall | peak RSS | notes |\n|---|---|---|---|")
    for name in results:
        r = results[name]
        if name != "size":
            notes = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("seconds", "peak_rss_gb", "rc", "log"))
            print(f"| {name} | {r['seconds'] / 60:.1f} min | {r['peak_rss_gb']:.2f} GB | {notes} |")


def accuracy(a):
    import numpy as np
    from scipy.stats import spearmanr

    from hpcsnp.folds import fold_split
    from hpcsnp.linear import scalable
    from hpcsnp.linear.baseline import centred_kernels, gblup_kernel_predict, gram_matrix, read_rows
    from hpcsnp.linear.gwas import gwas_store
    from hpcsnp.resources import cap_threads, dask_context
    from hpcsnp.store import open_store

    cap_threads(a.threads)
    rows = []
    for path in a.stores:
        store = open_store(path)
        y = store.phenotype.astype(np.float64)
        folds = [int(f) for f in a.folds.split(",")] if a.folds else range(1, store.n_folds + 1)
        for enc in a.encodings.split(","):
            t0 = time.perf_counter()
            G, width = gram_matrix(read_rows(store, np.arange(store.n_samples)), enc)
            gram_s = time.perf_counter() - t0
            for i in folds:
                split = fold_split(store.fold, store.n_folds, i)
                fit = np.sort(np.concatenate([split.train, split.val]))
                inner = (np.flatnonzero(~np.isin(fit, split.val)), np.flatnonzero(np.isin(fit, split.val)))
                t0 = time.perf_counter()
                K, K_test = centred_kernels(G, width, fit, split.test)
                ex = gblup_kernel_predict(K, y[fit], K_test, inner=inner, overwrite=True)
                del K
                t_exact = time.perf_counter() - t0 + gram_s / len(folds)
                row = {"store": store.name, "encoding": enc, "fold": i, "n_fit": len(fit),
                       "exact_pcc": float(np.corrcoef(ex.pred, y[split.test])[0, 1]), "exact_s": round(t_exact, 1)}
                for label, lines in (("scalable", scalable.REML_LINES), ("sampled", a.sample_lines)):
                    if label == "sampled" and not lines:
                        continue
                    t0 = time.perf_counter()
                    with dask_context("threads", a.threads):
                        sc = scalable.scalable_fold(store, enc, y, fit, inner, split.test, reml_lines=lines)
                    row[f"{label}_pcc"] = float(np.corrcoef(sc.pred, y[split.test])[0, 1])
                    row[f"{label}_minus_exact"] = row[f"{label}_pcc"] - row["exact_pcc"]
                    row[f"{label}_s"] = round(time.perf_counter() - t0, 1)
                    row[f"{label}_iterations"] = sc.info["cg_iterations"]
                    row[f"{label}_h2"] = sc.info["h2_reml"]
                row["exact_h2"] = 1 / (1 + ex.delta)
                rows.append(row)
                print(json.dumps(row), flush=True)
            del G
        if a.gwas:
            t0 = time.perf_counter()
            exact = gwas_store(store, solver="exact")
            t1 = time.perf_counter()
            with dask_context("threads", a.threads):
                fast = gwas_store(store, solver="scalable")
            t2 = time.perf_counter()
            e, f = -np.log10(exact.table["p"].to_numpy()), -np.log10(fast.table["p"].to_numpy())
            ok = np.isfinite(e) & np.isfinite(f)
            top = set(np.argsort(-e)[:20]) & set(np.argsort(-f)[:20])
            g = {"store": store.name, "gwas_spearman": float(spearmanr(e[ok], f[ok])[0]),
                 "top20_shared": len(top), "lambda_exact": exact.summary["lambda_gc"],
                 "lambda_scalable": fast.summary["lambda_gc"], "exact_s": round(t1 - t0, 1),
                 "scalable_s": round(t2 - t1, 1), "gamma_cv": fast.summary.get("gamma_cv")}
            rows.append(g)
            print(json.dumps(g), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")
    folds_rows = [r for r in rows if "fold" in r]
    for (s, enc) in dict.fromkeys((r["store"], r["encoding"]) for r in folds_rows):
        sel = [r for r in folds_rows if r["store"] == s and r["encoding"] == enc]
        d = [r["scalable_minus_exact"] for r in sel]
        line = (f"{s} {enc}: {len(sel)} folds, exact PCC {np.mean([r['exact_pcc'] for r in sel]):.4f}, scalable "
                f"minus exact max |{max(map(abs, d)):.2e}|, CG iterations {min(r['scalable_iterations'] for r in sel)}"
                f"-{max(r['scalable_iterations'] for r in sel)}")
        if "sampled_pcc" in sel[0]:
            ds = [r["sampled_minus_exact"] for r in sel]
            line += f"; REML on {a.sample_lines} lines: mean {np.mean(ds):+.4f}, worst {min(ds):+.4f}"
        print(line)


def folds_reml(a):
    """Exact REML's delta on each fold's fitting lines against REML on every phenotyped line:
    how far the folds' estimate, where predict's refit starts its search, lies from the refit's."""
    import numpy as np

    from hpcsnp.folds import fold_split
    from hpcsnp.linear.baseline import REMLSpectrum, centred_kernels, gram_matrix, read_rows
    from hpcsnp.resources import cap_threads
    from hpcsnp.store import open_store

    cap_threads(a.threads)
    print("| store | encoding | h2, every line | h2, folds' geometric mean | folds' mean minus every line, "
          "log delta | each fold's, lowest and highest |\n|---|---|---|---|---|---|")
    for path in a.stores:
        store = open_store(path)
        y = store.phenotype.astype(np.float64)
        for enc in a.encodings.split(","):
            G, width = gram_matrix(read_rows(store, np.arange(store.n_samples)), enc)
            splits = [fold_split(store.fold, store.n_folds, i) for i in range(1, store.n_folds + 1)]
            fits = [store.phenotyped] + [np.sort(np.concatenate([s.train, s.val])) for s in splits]
            every, *folds = [float(np.log(REMLSpectrum(centred_kernels(G, width, rows, rows[:0])[0], y[rows],
                                                       overwrite=True).maximise()[0])) for rows in fits]
            folds = np.array(folds)
            print(f"| {store.name} | {enc} | {1 / (1 + np.exp(every)):.4f} | {1 / (1 + np.exp(folds.mean())):.4f} | "
                  f"{folds.mean() - every:+.3f} | {folds.min() - every:+.3f}, {folds.max() - every:+.3f} |", flush=True)
            del G


def genetic_values(store, cols, effects):
    """sum_j effects_j (x_j - mean_j) over the SNP columns ``cols``, missing calls at the column's
    mean, read chunk by chunk (only those columns are kept: bounded memory at any size)."""
    import numpy as np

    from hpcsnp.store import read_genotype_rows

    cols = np.asarray(cols)
    sums, calls, parts = np.zeros(len(cols)), np.zeros(len(cols)), []
    for lo in range(0, store.n_samples, store.chunk_rows):
        g = read_genotype_rows(store, lo, min(lo + store.chunk_rows, store.n_samples))[:, cols]
        sums += np.where(g < 0, 0, g).sum(axis=0)
        calls += (g >= 0).sum(axis=0)
        parts.append(g)
    mean = sums / np.maximum(calls, 1)
    gv = np.concatenate([np.where(g < 0, mean, g) @ effects for g in parts])
    return gv - mean @ effects


def peak_rss_gb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def loco(a):
    """The GWAS's calibration without structure, with and without LOCO, on both solvers: a trait
    whose causal loci (the simulator's truth table, ``--causal``) are those on odd-numbered
    chromosomes (h2 ``--h2``), so the SNPs of the even-numbered ones are null once their own
    chromosome is left out of the kinship; lambda over those null SNPs and over all, and the
    scalable test's Spearman with the exact one."""
    import numpy as np
    import pandas as pd
    from scipy import stats
    from scipy.stats import spearmanr

    from hpcsnp.linear.gwas import CHI2_MEDIAN, genomic_inflation, gwas_store
    from hpcsnp.resources import cap_threads, dask_context
    from hpcsnp.store import open_store

    cap_threads(a.threads)
    store = open_store(a.store)
    chrom = np.array([int(str(c).lstrip("Chr").lstrip("0") or 0) for c in store.contig])
    truth = pd.read_csv(a.causal, sep="\t")
    col = {v: j for j, v in enumerate(store.variant_id)}
    given = [int(c) for c in a.null_chromosomes.split(",") if c]
    null = np.isin(chrom, given) if given else chrom % 2 == 0
    truth_loci = [(col[s], e) for s, e in zip(truth.snp, truth.effect) if s in col and not null[col[s]]]
    out = {"store": store.name, "null_snps": int(null.sum()), "h2": a.h2, "replicates": a.replicates}
    per, logp, null_chi2 = {}, {}, {}
    for rep in range(a.replicates):
        keep = truth_loci
        if a.polygenic:  # N SNPs of the other chromosomes, normal effects, drawn anew for each replicate
            draw = np.random.default_rng(11 + rep)
            carrying = np.flatnonzero(~null)
            keep = [(j, e) for j, e in zip(np.sort(draw.choice(carrying, a.polygenic, replace=False)),
                                           draw.standard_normal(a.polygenic))]
        out["causal_loci"] = len(keep)
        gv = genetic_values(store, [j for j, _ in keep], np.array([e for _, e in keep]))
        rng = np.random.default_rng(7 + rep)
        y = gv / gv.std() * np.sqrt(a.h2) + rng.normal(0, np.sqrt(1 - a.h2), len(gv))
        table = Path(a.work) / "odd_chromosomes.tsv"
        pd.DataFrame({"id": store.sample_id, "odd": y}).to_csv(table, sep="\t", index=False)
        trait = open_store(a.store, pheno=table, trait="odd")
        for solver in a.solvers.split(","):
            for loco_on in [t == "loco" for t in a.tests.split(",")]:
                t0 = time.perf_counter()
                with dask_context("threads", a.threads):
                    r = gwas_store(trait, solver=solver, loco=loco_on)
                key = f"{solver}{'_loco' if loco_on else ''}"
                pv = r.table["p"].to_numpy()
                if rep == 0:
                    logp[key] = -np.log10(pv)
                chi2 = stats.chi2.isf(pv[null], 1)
                null_chi2.setdefault(key, []).append(chi2)
                row = {"replicate": rep, "seconds": round(time.perf_counter() - t0, 1),
                       "peak_rss_gb": round(peak_rss_gb(), 2),
                       **{k: r.summary[k] for k in ("h2_reml", "reml_lines", "mc_reml_evaluations", "reml_seconds",
                                                    "cg_iterations", "passes") if k in r.summary},
                       "lambda_all": round(genomic_inflation(pv), 4),
                       "lambda_null": round(genomic_inflation(pv[null]), 4),
                       "mean_chi2_null": round(float(np.nanmean(chi2)), 4)}
                per.setdefault(key, []).append(row)
                print(json.dumps({key: row}), flush=True)
    for key, rows in per.items():
        lam = np.array([r["lambda_null"] for r in rows])
        pooled = np.concatenate(null_chi2[key])
        out[key] = {"seconds": rows[0]["seconds"], "lambda_all": rows[0]["lambda_all"],
                    "lambda_null": round(float(lam.mean()), 4),
                    "lambda_null_sd": round(float(lam.std(ddof=1)), 4) if len(lam) > 1 else None,
                    "lambda_null_pooled": round(float(np.nanmedian(pooled) / CHI2_MEDIAN), 4),
                    "mean_chi2_null": round(float(np.nanmean(pooled)), 4), "replicates": rows}
    for k in ("", "_loco") if len(logp) == 4 else ():
        e, f = logp["exact" + k], logp["scalable" + k]
        ok = np.isfinite(e) & np.isfinite(f)
        out["spearman" + (k or "_whole")] = round(float(spearmanr(e[ok], f[ok])[0]), 5)
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "replicates"} if isinstance(v, dict) else v)
                      for k, v in out.items()}), flush=True)
    (Path(a.work) / "loco.json").write_text(json.dumps(out, indent=2) + "\n")


def timed_pass(design, U, masks, means, scheduler, a):
    """The best of ``a.repeat`` passes Z' M Z U on that Dask scheduler, and the pass's result."""
    import numpy as np

    from hpcsnp.resources import dask_context

    best = np.inf
    with dask_context(scheduler, None if "://" in scheduler else a.threads):
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = design.normal(U, masks, means)
            best = min(best, time.perf_counter() - t0)
    return best, out


def passes(a):
    import numpy as np

    from hpcsnp.linear import scalable
    from hpcsnp.resources import cap_threads, dask_context
    from hpcsnp.store import open_store

    cap_threads(a.threads)
    store = open_store(a.store)
    rng = np.random.default_rng(0)
    print(f"{store.n_samples:,} lines x {store.n_variants:,} SNPs, {a.threads} threads, {scalable.__file__}\n")
    extra = (f" on {a.workers} Dask workers | largest difference |", "---|---|") if a.workers else ("", "")
    print(f"| encoding | systems | pass |{extra[0]}\n|---|---|---|{extra[1]}")
    for enc in a.encodings.split(","):
        design = scalable.Design(store, enc, np.zeros(store.n_variants), persist=False)
        for k in map(int, filter(None, a.systems.split(","))):
            U, masks = rng.standard_normal((design.width, k)), np.ones((store.n_samples, k))
            means = np.full((design.width, k), 0.5)
            (best, out), row = timed_pass(design, U, masks, means, "threads", a), f"| {enc} | {k} | "
            if a.workers:  # the same pass on a local distributed cluster of that many one-thread workers
                from distributed import LocalCluster

                with LocalCluster(n_workers=a.workers, threads_per_worker=1, dashboard_address=None) as cluster:
                    wbest, wout = timed_pass(design, U, masks, means, cluster.scheduler_address, a)
                row += f"{best:.1f} s | {wbest:.1f} s | {np.abs(wout - out).max() / np.abs(out).max():.1e} |"
            else:
                row += f"{best:.1f} s |"
            print(row, flush=True)
        if a.wide:  # the eigenpairs' passes: Z U and Z' V with that many columns, in float32
            U, means = rng.standard_normal((design.width, a.wide)), np.full(design.width, 0.5)
            with dask_context("threads", a.threads):
                t0 = time.perf_counter()
                V = design.apply(U, np.repeat(means[:, None], a.wide, axis=1), np.float32)
                t1 = time.perf_counter()
                design.rmat(V, means, np.float32)
                t2 = time.perf_counter()
            print(f"| {enc} | {a.wide}, float32: Z U | {t1 - t0:.1f} s |\n| {enc} | {a.wide}, float32: Z' V | "
                  f"{t2 - t1:.1f} s |", flush=True)


def search(a):
    import numpy as np

    from hpcsnp.folds import fold_split
    from hpcsnp.linear import scalable
    from hpcsnp.resources import cap_threads, dask_context
    from hpcsnp.store import open_store

    cap_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.start_factor != 1:  # Monte Carlo REML started further from its root, as at 100,000 lines
        sampled = scalable.reml_delta_sample

        def scaled(*args, **kwargs):
            delta, used = sampled(*args, **kwargs)
            return delta * a.start_factor, used
        scalable.reml_delta_sample = scaled
    store = open_store(a.store)
    y = store.phenotype.astype(np.float64)
    print(f"{store.n_samples:,} lines x {store.n_variants:,} SNPs, {a.threads} threads, {scalable.__file__}")
    rows = []
    for enc in a.encodings.split(","):
        for lines in map(int, a.reml_lines.split(",")):
            for i in map(int, a.folds.split(",")):
                split = fold_split(store.fold, store.n_folds, i)
                fit = np.sort(np.concatenate([split.train, split.val]))
                inner = (np.flatnonzero(~np.isin(fit, split.val)), np.flatnonzero(np.isin(fit, split.val)))
                t0 = time.perf_counter()
                with dask_context("threads", a.threads):
                    sc = scalable.scalable_fold(store, enc, y, fit, inner, split.test, reml_lines=lines)
                info = sc.info
                row = {"encoding": enc, "reml_lines": lines, "start_factor": a.start_factor, "fold": i,
                       "seconds": round(time.perf_counter() - t0, 1),
                       "passes": info["passes"], "evaluations": info["mc_reml_evaluations"],
                       "h2": round(info["h2_reml"], 5), "final_iterations": info["cg_iterations"],
                       "pcc": round(float(np.corrcoef(sc.pred, y[split.test])[0, 1]), 6)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| encoding | REML lines | fold | wall | passes | evaluations | final CG iterations | h2 | PCC |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoding']} | {r['reml_lines']:,} | {r['fold']} | {r['seconds']:.0f} s | {r['passes']} | "
              f"{r['evaluations']} | {r['final_iterations']} | {r['h2']:.4f} | {r['pcc']:.5f} |")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


def tolerance(a):
    import numpy as np

    from hpcsnp.folds import fold_split
    from hpcsnp.linear import scalable
    from hpcsnp.resources import cap_threads, dask_context
    from hpcsnp.store import open_store

    cap_threads(a.threads)
    store = open_store(a.store)
    y = scalable.known(store.phenotype.astype(np.float64))
    split = fold_split(store.fold, store.n_folds, 1)
    fit = np.sort(np.concatenate([split.train, split.val]))
    masks = np.zeros((store.n_samples, 2))
    masks[fit, 0] = masks[split.train, 1] = 1
    delta = (1 - a.h2) / a.h2
    offsets = [float(o) for o in a.offsets.split(",")] if a.offsets else None
    steps = [(delta * np.exp(o), 1e-6, f"log delta {o:+.3f}") for o in offsets] if offsets else \
        [(delta, float(t), f"tolerance {float(t):.0e}") for t in a.tolerances.split(",")]
    with dask_context("threads", a.threads):
        design = scalable.Design(store, a.encoding, np.zeros(store.n_variants))
        if a.encoding == "dosage":
            design.fill = scalable.design_fill(store, design)
        deflate = scalable.preconditioner(design)
        last, iterations, got = None, 0, []
        for d, tol, label in steps:
            last = scalable.ridge(design, y, masks, d, deflate=deflate, tol=tol, start=last, what=label)
            iterations += last.iterations
            pred = last.mu + design.apply(last.beta, last.means)
            got.append((label, 1 / (1 + d), iterations, pred[split.test, 0], pred[split.val, 1]))
    ref = got[0] if offsets else got[-1]
    print(f"\n{a.encoding}, fold 1, h2 {a.h2}\n\n| solve | h2 | CG iterations (cumulative) | test PCC | "
          "max change of a prediction / SD (test, validation) |\n|---|---|---|---|---|")
    for label, h2, its, test, val in got:
        change = [np.abs(p - r).max() / r.std() for p, r in ((test, ref[3]), (val, ref[4]))]
        print(f"| {label} | {h2:.4f} | {its} | {np.corrcoef(test, y[split.test])[0, 1]:.7f} | "
              f"{change[0]:.2e}, {change[1]:.2e} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--samples", type=int, default=100_000)
    s.add_argument("--snps", type=int, default=50_000)
    s.add_argument("--work", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--steps-per-epoch", type=int, default=20)
    s.add_argument("--solver", default="auto")
    s.add_argument("--predict-lines", type=int, default=8192,
                   help="cnn_predict: time this many lines and scale to every line (linear in lines)")
    s.add_argument("--only", default="simulate,ingest,gwas,baseline,refit,cnn_predict,epoch")
    s.add_argument("--encoding", default="dosage", help="the baseline's and the refit's (dosage or onehot)")
    c = sub.add_parser("accuracy")
    c.add_argument("stores", nargs="+")
    c.add_argument("--encodings", default="dosage")
    c.add_argument("--folds", default="")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--sample-lines", type=int, default=0,
                   help="also take delta by REML on this many lines (0: no)")
    c.add_argument("--gwas", action="store_true")
    c.add_argument("--out")
    c = sub.add_parser("folds-reml")
    c.add_argument("stores", nargs="+")
    c.add_argument("--encodings", default="dosage,onehot")
    c.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("loco")
    c.add_argument("store")
    c.add_argument("--causal", required=True, help="the simulator's truth table (snp, effect)")
    c.add_argument("--h2", type=float, default=0.5)
    c.add_argument("--polygenic", type=int, default=0, help="N causal SNPs of the odd chromosomes (0: the truth's)")
    c.add_argument("--solvers", default="exact,scalable")
    c.add_argument("--null-chromosomes", default="", help="chromosomes without causal loci (default: the even ones)")
    c.add_argument("--tests", default="whole,loco", help="whole-genome kinship, LOCO or both")
    c.add_argument("--replicates", type=int, default=1,
                   help="traits drawn anew (causal SNPs with --polygenic, and noise): lambda's mean, sd and pooled")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--work", required=True)
    c = sub.add_parser("passes")
    c.add_argument("store")
    c.add_argument("--encodings", default="dosage,onehot")
    c.add_argument("--systems", default="2,17")
    c.add_argument("--repeat", type=int, default=1)
    c.add_argument("--wide", type=int, default=0, help="also time the eigenpairs' float32 passes, this wide")
    c.add_argument("--workers", type=int, default=0,
                   help="also time each pass on a local Dask cluster of this many one-thread worker processes")
    c.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("search")
    c.add_argument("store")
    c.add_argument("--encodings", default="dosage")
    c.add_argument("--folds", default="1")
    c.add_argument("--reml-lines", default="2000",
                   help="REML on this many sampled fitting lines before Monte Carlo REML on all (comma-separated)")
    c.add_argument("--start-factor", type=float, default=1.0,
                   help="multiply the sample's REML delta by this before Monte Carlo REML (a start further away)")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--out")
    c = sub.add_parser("tolerance")
    c.add_argument("store")
    c.add_argument("--encoding", default="dosage")
    c.add_argument("--h2", type=float, required=True, help="the delta to solve at, as h2 (the search's estimate)")
    c.add_argument("--tolerances", default="1e-3,1e-4,1e-5,1e-6,1e-7,1e-10")
    c.add_argument("--offsets", default="", help="log-delta offsets from --h2's (then solved to 1e-6)")
    c.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    {"steps": steps, "accuracy": accuracy, "loco": loco, "passes": passes, "search": search,
     "tolerance": tolerance, "folds-reml": folds_reml}[a.mode](a)


if __name__ == "__main__":
    main()
