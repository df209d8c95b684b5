"""Attribution variants computed afterwards from the fold models of `bench_attribution.py`
runs (no retraining) and scored against the simulated truth, beside the GWAS.

    python bench/attribution_variants.py --work DIR [--seeds 3]

For every fold: the gradient g of the fold's prediction (the mean of its models) with
respect to the one-hot input of each of its test lines.  From it, per SNP:

* saliency: max over the four channels of |g| (the publication's);
* additive: the gradient along the allele dosage, a = (g[aa] - g[AA]) / 2 per allele copy
  (the same in every basis, and free of the constant the one-hot coding leaves per SNP),
  and dominance: h = g[Aa] - (g[AA] + g[aa]) / 2;
* scores from them: mean |a|; |mean a| (the network's average additive effect, its noise
  cancelling over lines); |mean a| x sd(dosage); mean |a (d - mean d)| (gradient x input
  on the dosage); mean |g . (x - mean x)| (gradient x input on all channels); and
  sqrt((mean a sd(d))^2 + (mean h sd(het))^2) (additive and dominance together);
* marginal: as ``--attribution marginal`` computes it (the fold's prediction of every line
  against each SNP's dosage, cov / sd, averaged over folds by their test counts, magnitude).

Means are over every test line of every fold (each line once).  Scores: main-effect loci
among the top 20 loci (LD blocks in the order of their best SNP), recall in the top 1 %
and 5 % of SNPs.  For reference: the GWAS and |rrBLUP marker effect| (the GBLUP dosage refit on
every line), alone and times the dosage's sd.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import main_effect_loci_found, rrblup_effects, score_ranking  # noqa: E402


def fold_sums(run: Path, dataset: str, fold: int, store, batch: int = 256) -> dict:
    """Per-SNP sums over the fold's test lines of every quantity the scores need."""
    import keras
    import tensorflow as tf

    import hpcsnp.cnn.model  # noqa: F401 - registers the custom layers
    from hpcsnp.cnn.attribution.marginal import MarginalAssociation
    from hpcsnp.cnn.data import one_hot
    from hpcsnp.linear.baseline import read_rows

    d = run / dataset / f"fold_{fold}"
    metrics = json.loads((d / "metrics.json").read_text())
    target = (metrics["target_mean"], metrics["target_sd"])
    paths = [d / "model.keras", *sorted(d.glob("seed_*/model.keras"))]
    models = [keras.models.load_model(p, compile=False) for p in paths]

    @tf.function(autograph=False)
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.add_n([tf.reduce_sum(m(x, training=False)) for m in models]) / len(models)
        return tape.gradient(y, x)

    rows = np.flatnonzero(store.fold == fold)
    codes = read_rows(store, rows)
    called = codes >= 0
    dosage = np.where(called, codes, 0).astype(np.float64)
    mean_d = dosage.sum(0) / np.maximum(called.sum(0), 1)
    dosage = np.where(called, dosage, mean_d)  # missing calls at the mean dosage
    het = (codes == 1).astype(np.float64)
    x_all = np.eye(4)[[0, 2, 1, 3]][codes + 1]  # one_hot's channels: missing, Aa, AA, aa
    mean_x = x_all.mean(0)
    out = {k: np.zeros(codes.shape[1]) for k in ("sal", "a_abs", "a", "h", "ax", "gx")}
    for s in range(0, len(rows), batch):
        c = codes[s:s + batch]
        g = gradient(one_hot(tf.constant(c))).numpy().astype(np.float64)
        a = (g[..., 3] - g[..., 2]) / 2
        h = g[..., 1] - (g[..., 2] + g[..., 3]) / 2
        out["sal"] += np.abs(g).max(-1).sum(0)
        out["a_abs"] += np.abs(a).sum(0)
        out["a"] += a.sum(0)
        out["h"] += h.sum(0)
        out["ax"] += np.abs(a * (dosage[s:s + batch] - mean_d)).sum(0)
        out["gx"] += np.abs((g * (x_all[s:s + batch] - mean_x)).sum(-1)).sum(0)
    marginal = MarginalAssociation(codes.shape[1])  # what --attribution marginal computes: every line
    everyone = read_rows(store, np.arange(store.n_samples))
    for s in range(0, len(everyone), batch):
        c = everyone[s:s + batch]
        x = one_hot(tf.constant(c))
        y = np.mean([m(x, training=False).numpy()[:, 0] for m in models], axis=0)
        marginal.add(c, y * target[1] + target[0])
    out["marginal"] = marginal.result() * len(rows)
    out["n"] = len(rows)
    out["sd_d"] = dosage.std(0) * len(rows)  # summed like the rest, divided by the count below
    out["sd_h"] = het.std(0) * len(rows)
    return out


def dosage_sd(store_path: Path) -> np.ndarray:
    """Per-SNP standard deviation of the called dosages over every line."""
    from hpcsnp.linear.baseline import read_rows
    from hpcsnp.store import open_store

    store = open_store(store_path)
    g = read_rows(store, np.arange(store.n_samples)).astype(np.float64)
    g[g < 0] = np.nan
    return np.nanstd(g, axis=0)


def variant_scores(run: Path, store_path: Path) -> dict:
    from hpcsnp.store import open_store

    store = open_store(store_path)
    dataset = json.loads(next(run.glob("*/dataset.json")).read_text())["dataset"]
    sums = [fold_sums(run, dataset, i, store) for i in range(1, store.n_folds + 1)]
    n = sum(s["n"] for s in sums)
    m = {k: sum(s[k] for s in sums) / n for k in sums[0] if k != "n"}
    return {"saliency (recomputed)": m["sal"], "mean |additive|": m["a_abs"], "|mean additive|": np.abs(m["a"]),
            "|mean additive| x sd": np.abs(m["a"]) * m["sd_d"], "dosage x gradient": m["ax"],
            "input x gradient": m["gx"],
            "additive + dominance": np.hypot(m["a"] * m["sd_d"], m["h"] * m["sd_h"]),
            "marginal": np.abs(m["marginal"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    for seed in range(1, args.seeds + 1):
        d = args.work / f"seed{seed}"
        truth = json.loads((d / "truth.json").read_text())
        table = pd.read_csv(d / "run" / "avg_saliency.csv")
        p = len(table)
        beta = rrblup_effects(d / "sim.zarr")
        rankings = {"saliency (run)": table["saliency"].to_numpy(),
                    "gwas": -np.log10(np.maximum(table["gwas_p"].to_numpy(), 1e-300)),
                    "|rrBLUP effect|": beta, "|rrBLUP effect| x sd": beta * dosage_sd(d / "sim.zarr"),
                    **variant_scores(d / "run", d / "sim.zarr")}
        for name, score in rankings.items():
            score = np.nan_to_num(score, nan=-np.inf)
            found, missed = main_effect_loci_found(score, truth)
            rows.append({"seed": seed, "ranking": name, "loci_in_top20": found,
                         "missed": " ".join(f"{t[:3]}@{r}" for t, r in missed), **score_ranking(score, truth, p)})
        print(f"seed {seed} done", flush=True)
    out = pd.DataFrame(rows)
    out.to_csv(args.work / "attribution_variants.csv", index=False)
    cols = ["loci_in_top20"] + [c for c in out.columns if "recall" in c and "epistatic" not in c]
    print(out.groupby("ranking", sort=False)[cols].mean().to_string(float_format=lambda v: f"{v:.2f}"))
    print(out.pivot(index="ranking", columns="seed", values="loci_in_top20").to_string())


if __name__ == "__main__":
    main()
