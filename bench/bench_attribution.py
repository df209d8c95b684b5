"""Which SNP ranking finds the causal loci: hpcsnp's attributions, the mixed-model GWAS and
|rrBLUP marker effects|, on simulated architectures with linkage disequilibrium.

    python bench/bench_attribution.py --work DIR [--seeds 3] [--samples 1500] [--snps 1500]
                                      [--pair-gap 12] [-- CV OPTIONS, e.g. --activation elu]
    python bench/bench_attribution.py --work DIR --architecture polygenic --samples 2000 --snps 2000

Genotypes: each haplotype is a Markov chain along blocks of ``--block`` SNPs (the next SNP
copies the previous allele with probability 0.9, else is drawn afresh from its frequency;
blocks are independent), two haplotypes per line.  In separate blocks sit 3 additive, 2
dominant (effect when the line carries >= 1 ALT allele), 2 recessive (2 ALT alleles)
causal SNPs and one epistatic pair (effect (x_a - 1)(x_b - 1) at allele frequency 0.5: no
marginal effect on either SNP); every other block is a null decoy.  h2 = 0.7 in raw units.
Each seed: simulate, ingest, `hpcsnp cv --attribution smoothgrad,ig` (CNN and baselines),
`hpcsnp gwas --run`, `hpcsnp reduce`, and `hpcsnp gwas --loco` (unrelated lines, 10
independent chromosomes: the panel leaving a chromosome out is meant for); rrBLUP marker
effects come from the GBLUP dosage refit on every line.  For each ranking and effect type:
locus recall in the top 1 % and 5 % of SNPs (a causal locus is found when any SNP of its
block is there), precision in the top 1 % (share of its SNPs in causal blocks), and the
folds' rank correlation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

TYPES = {"additive": 3, "dominant": 2, "recessive": 2}


def _place_causal(rng, p: int, block: int, counts: dict):
    """Allele frequencies, the blocks in random order, and ``counts[type]`` causal SNPs of each
    type, one per block, in the first blocks of that order; also how many blocks were used."""
    freq = rng.uniform(0.15, 0.85, p)
    blocks = rng.permutation(p // block)
    causal, k = {}, 0
    for t, count in counts.items():
        causal[t] = [int(blocks[k + i] * block + rng.integers(block)) for i in range(count)]
        k += count
    return freq, blocks, causal, k


def simulate_ld(path: Path, n: int, p: int, block: int, seed: int, pair_gap: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    freq, blocks, causal, k = _place_causal(rng, p, block, TYPES)
    if not pair_gap:  # two random blocks, almost always far apart
        pair = [int(blocks[k] * block + rng.integers(block)), int(blocks[k + 1] * block + rng.integers(block))]
    else:  # pair_gap SNPs apart on one chromosome, in blocks no other causal SNP uses
        taken = {int(b) for b in blocks[:k]}
        first = next(int(b) * block + block // 2 for b in blocks[k:]
                     if all((int(b) * block + block // 2 + d) // block not in taken for d in (0, pair_gap))
                     and (int(b) * block + block // 2 + pair_gap) * 10 // p == int(b) * block * 10 // p)
        pair = [first, first + pair_gap]
    causal["epistatic"] = pair
    freq[pair] = 0.5

    g = _ld_genotypes(rng, n, p, block, freq)
    parts = []
    for j in causal["additive"]:
        parts.append(g[:, j] - g[:, j].mean())
    for j in causal["dominant"]:
        d = (g[:, j] >= 1).astype(float)
        parts.append(d - d.mean())
    for j in causal["recessive"]:
        r = (g[:, j] == 2).astype(float)
        parts.append(r - r.mean())
    epi = (g[:, pair[0]] - 1.0) * (g[:, pair[1]] - 1.0)
    parts.append(epi - epi.mean())
    parts = [x / x.std() for x in parts]
    genetic = np.sum(parts, axis=0)
    genetic /= genetic.std()
    y = 100 + 10 * (np.sqrt(0.7) * genetic + np.sqrt(0.3) * rng.standard_normal(n))
    names = _write(path, rng, g, y)
    return {"causal": causal, "block": block, "names": names}


def _write(path: Path, rng, g: np.ndarray, y: np.ndarray) -> list[str]:
    """The simulated lines as hpcsnp text (10 chromosomes, 5 random folds); the SNP names."""
    n, p = g.shape
    names = [f"Chr{1 + j * 10 // p:02d}_{10_000 * (j + 1)}" for j in range(p)]
    folds = rng.permutation(n) % 5 + 1
    with open(path, "w") as f:
        f.write("line\tfold\tphenotype\t" + "\t".join(names) + "\n")
        for i in range(n):
            f.write(f"L{i}\t{folds[i]}\t{y[i]:.4f}\t" + "\t".join(map(str, g[i])) + "\n")
    return names


def _ld_genotypes(rng, n: int, p: int, block: int, freq: np.ndarray) -> np.ndarray:
    """Allele counts [n, p]: two haplotypes per line, each a Markov chain along blocks of
    ``block`` SNPs (the next SNP copies the previous allele with probability 0.9)."""
    def haplotypes():
        h = (rng.random((n, p)) < freq).astype(np.int8)
        copy = rng.random((n, p)) < 0.9
        for j in range(1, p):
            if j % block:
                h[:, j] = np.where(copy[:, j], h[:, j - 1], h[:, j])
        return h
    return haplotypes() + haplotypes()


POLYGENIC = {"additive": 20, "dominant": 4, "recessive": 2}


def simulate_polygenic(path: Path, n: int, p: int, block: int, seed: int, missing: float = 0.02,
                       h2: float = 0.5) -> dict:
    """Many moderate effects: 20 additive loci whose effect sizes are drawn from a Gamma(1.5)
    (a few large, many small), 4 dominant, 2 recessive and one pure epistatic pair, each
    causal SNP in a block of its own; phenotype in raw units (mean 50, sd 10, h2 ``h2``);
    ``missing`` of the calls set missing at random."""
    rng = np.random.default_rng(10_000 + seed)
    freq, blocks, causal, k = _place_causal(rng, p, block, POLYGENIC)
    pair = [int(blocks[k] * block + rng.integers(block)), int(blocks[k + 1] * block + rng.integers(block))]
    causal["epistatic"] = pair
    freq[pair] = 0.5
    g = _ld_genotypes(rng, n, p, block, freq)
    size = rng.gamma(1.5, 1.0, len(causal["additive"]))
    parts = []
    for j, b in zip(causal["additive"], size):
        x = g[:, j] - g[:, j].mean()
        parts.append(b * rng.choice([-1, 1]) * x / x.std())
    for t, typical in (("dominant", 1.0), ("recessive", 1.0)):
        for j in causal[t]:
            d = (g[:, j] >= 1 if t == "dominant" else g[:, j] == 2).astype(float)
            parts.append(typical * (d - d.mean()) / d.std())
    epi = (g[:, pair[0]] - 1.0) * (g[:, pair[1]] - 1.0)
    parts.append((epi - epi.mean()) / epi.std())
    genetic = np.sum(parts, axis=0)
    genetic /= genetic.std()
    y = 50 + 10 * (np.sqrt(h2) * genetic + np.sqrt(1 - h2) * rng.standard_normal(n))
    g = g.astype(np.int8)
    g[rng.random(g.shape) < missing] = -1
    names = _write(path, rng, g, y)
    return {"causal": causal, "block": block, "names": names, "additive_sizes": size.tolist()}


def top_loci(score: np.ndarray, block: int, k: int = 20) -> list[int]:
    """The first ``k`` LD blocks in the order of their best SNP (each block counted once)."""
    order = np.argsort(-score, kind="stable")
    seen: dict = {}
    for j in order:
        seen.setdefault(int(j) // block, None)
        if len(seen) == k:
            break
    return list(seen)


def main_effect_loci_found(score: np.ndarray, truth: dict, k: int = 20) -> tuple[int, list]:
    """Main-effect (additive, dominant, recessive) loci among the top ``k`` loci, and for each
    one missed, its type and the locus rank of its block."""
    block = truth["block"]
    order = np.argsort(-score, kind="stable")
    rank_of: dict = {}
    for j in order:
        rank_of.setdefault(int(j) // block, len(rank_of) + 1)
    found, missed = 0, []
    for t in ("additive", "dominant", "recessive"):
        for j in truth["causal"][t]:
            r = rank_of[j // block]
            if r <= k:
                found += 1
            else:
                missed.append((t, r))
    return found, sorted(missed, key=lambda m: m[1])


def hpcsnp(*args):
    subprocess.run([sys.executable, "-m", "hpcsnp", *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def rrblup_effects(store_path: Path) -> np.ndarray:
    from hpcsnp.linear.baseline import gram_matrix, read_rows
    from hpcsnp.linear.refit import marker_effects
    from hpcsnp.store import open_store

    store = open_store(store_path)
    G, width = gram_matrix(read_rows(store, np.arange(store.n_samples)), "dosage")
    return np.abs(marker_effects(store, "dosage", G, width, np.arange(store.n_samples)).beta)


def score_ranking(score: np.ndarray, truth: dict, p: int) -> dict:
    block = truth["block"]
    order = np.argsort(-score, kind="stable")
    out = {}
    causal_blocks = {j // block for js in truth["causal"].values() for j in js}
    for share, label in ((0.01, "1"), (0.05, "5")):
        top_blocks = {j // block for j in order[:max(1, int(round(share * p)))]}
        for t, js in truth["causal"].items():
            found = {j // block for j in js} & top_blocks
            out[f"{t}_recall{label}"] = len(found) / len({j // block for j in js})
        if label == "1":
            top = order[:max(1, int(round(share * p)))]
            out["precision1"] = float(np.mean([j // block in causal_blocks for j in top]))
    return out


def run_seed(work: Path, seed: int, n: int, p: int, block: int, pair_gap: int = 0,
             cv_args: tuple[str, ...] = (), architecture: str = "few") -> list[dict]:
    d = work / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    truth_path = d / "truth.json"
    if not truth_path.exists():
        truth = (simulate_polygenic(d / "sim.tsv", n, p, block, seed) if architecture == "polygenic"
                 else simulate_ld(d / "sim.tsv", n, p, block, seed, pair_gap))
        truth_path.write_text(json.dumps(truth))
    truth = json.loads(truth_path.read_text())
    from hpcsnp.linear.gwas import gwas_table_path, read_gwas_table
    from hpcsnp.run.reduce import read_plink_style

    t0 = time.perf_counter()
    if not (d / "run" / "attribution_summary.tsv").exists():
        if not (d / "sim.zarr").exists():
            hpcsnp("ingest", d / "sim.tsv", "-o", d / "sim.zarr", "--no-progress")
        hpcsnp("cv", d / "sim.zarr", "--run", d / "run", "--attribution", "smoothgrad,ig", "--no-progress", *cv_args)
        hpcsnp("gwas", d / "sim.zarr", "--run", d / "run")
        hpcsnp("reduce", "--run", d / "run")
    seconds = time.perf_counter() - t0
    if not gwas_table_path(d / "gwas_loco").exists():
        hpcsnp("gwas", d / "sim.zarr", "-o", d / "gwas_loco", "--loco")
    loco_p = read_gwas_table(gwas_table_path(d / "gwas_loco"))["p"].to_numpy()
    scores = pd.read_csv(d / "run" / "avg_saliency.csv")
    summary = read_plink_style(d / "run" / "attribution_summary.tsv").set_index("METHOD")
    pcc = pd.read_csv(d / "run" / "fold_pcc_summary.csv").set_index("model")["pcc_mean"]
    methods = ("saliency", "smoothgrad", "ig", "marginal", "combined")
    rankings = {**{m: scores[m].to_numpy() for m in methods if m in scores},
                "gwas": -np.log10(np.maximum(scores["gwas_p"].to_numpy(), 1e-300)),
                "gwas_loco": -np.log10(np.maximum(loco_p, 1e-300)), "rrblup_abs_effect": rrblup_effects(d / "sim.zarr")}
    rows = []
    for name, score in rankings.items():
        score = np.nan_to_num(score, nan=-np.inf)
        found, missed = main_effect_loci_found(score, truth)
        row = {"seed": seed, "ranking": name, "loci_in_top20": found,
               "missed": " ".join(f"{t[:3]}@{r}" for t, r in missed), **score_ranking(score, truth, p),
               "fold_rank_correlation": summary["FOLD_RANK_CORRELATION"].get(name, np.nan),
               "cnn_pcc": pcc.get("cnn"), "gblup_pcc": pcc.get("gblup_dosage"), "rkhs_pcc": pcc.get("rkhs"),
               "seconds": seconds}
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--snps", type=int, default=1500)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--architecture", choices=["few", "polygenic"], default="few",
                    help="few: 3 additive, 2 dominant, 2 recessive loci and a pair, h2 0.7; polygenic: 20 additive "
                         "loci of Gamma(1.5) sizes, 4 dominant, 2 recessive and a pair, h2 0.5, 2 %% missing calls, "
                         "raw units (use --samples 2000 --snps 2000)")
    ap.add_argument("--pair-gap", type=int, default=0,
                    help="Put the epistatic pair this many SNPs apart on one chromosome (within the CNN's "
                         "receptive field of 26 SNPs when < 26) instead of in two random blocks.")
    ap.add_argument("cv_args", nargs="*", help="Options for hpcsnp cv, after --, e.g. -- --activation elu")
    args = ap.parse_args(argv)
    rows = []
    for seed in range(1, args.seeds + 1):
        rows += run_seed(args.work, seed, args.samples, args.snps, args.block, args.pair_gap, tuple(args.cv_args),
                         args.architecture)
        print(f"seed {seed} done", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.work / "attribution_benchmark.csv", index=False)
    cols = ["loci_in_top20"] + [c for c in table.columns if "recall" in c] + ["precision1", "fold_rank_correlation"]
    mean = table.groupby("ranking", sort=False)[cols].mean()
    print(f"\nmean over {args.seeds} seed(s); recall = share of causal loci of that type with a SNP in the top 1 % "
          "(recall1) or 5 % (recall5) of SNPs")
    print(mean.T.to_string(float_format=lambda v: f"{v:.2f}"))
    print("\nmain-effect loci missed in the top 20 loci (type@locus rank), per seed:")
    print(table.pivot(index="seed", columns="ranking", values="missed").to_string())
    acc = table.drop_duplicates("seed")[["seed", "cnn_pcc", "gblup_pcc", "rkhs_pcc", "seconds"]]
    print("\naccuracy of the runs (mean test PCC):")
    print(acc.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
