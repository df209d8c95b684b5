"""What a reader looks at after a run: the genome plot of saliency, the per-fold accuracy
of every model, observed against predicted, and the saliency of named SNPs."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import pandas as pd

from hpcsnp.errors import InputError
from hpcsnp.figures import genome_x, place_labels, pyplot, save_figure

SALIENCY_CSV = "avg_saliency.csv"


def plot_saliency(saliency: pd.DataFrame, path: Path, label_top: int = 10, labels=None) -> None:
    """Mean saliency along the genome; labelled, at most ``label_top`` of them and placed so
    that none overlaps: ``labels`` (the lead SNPs of the top loci) when given, else the top
    SNPs by saliency."""
    plt = pyplot()
    names = list(dict.fromkeys(saliency["dataset"]))
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        f = saliency[saliency["dataset"] == name].reset_index(drop=True)
        x, ticks = genome_x(f)
        chrom_idx = pd.factorize(f["chrom"])[0]
        colours = np.where(chrom_idx % 2 == 0, "#1f4e79", "#7fa7cf")
        ax.scatter(x, f["saliency"], c=colours, s=6, linewidths=0)
        shown = f[f["snp"].isin(labels)] if labels is not None else f
        shown = shown.nsmallest(label_top, "rank")
        ax.set_title(f"{name}: mean saliency over all test samples of all folds")
        ax.set_ylabel("mean max|df/dx|")
        if ticks:
            ax.set_xticks([t for _, t in ticks], [c for c, _ in ticks], fontsize=7, rotation=90)
        else:
            ax.set_xlabel("SNP index")
        ax.set_xlim(x.min() - 1, x.max() + 1)
        ax.set_ylim(bottom=0)
        place_labels(ax, x[shown.index], shown["saliency"], shown["snp"].tolist())
    fig.tight_layout()
    save_figure(fig, path)


def plot_attribution_vs_gwas(rankings, path: Path) -> None:
    """Per data set with a GWAS: its Manhattan plot above the mean saliency on the same genome
    axis, the top loci of each marked, loci found by both in red."""
    plt = pyplot()
    done = [g for g in rankings if g.gwas is not None]
    fig, axes = plt.subplots(2 * len(done), 1, figsize=(12, 5.6 * len(done)), squeeze=False, sharex=False)
    for k, g in enumerate(done):
        f = g.scores.reset_index(drop=True)
        x, ticks = genome_x(f)
        colours = np.where(pd.factorize(f["chrom"])[0] % 2 == 0, "#1f4e79", "#7fa7cf")
        loci = pd.DataFrame([r for r in g.loci if r["method"] == "saliency"])
        gl = g.gwas_loci if g.gwas_loci is not None else pd.DataFrame(columns=["lead_snp", "found_by_saliency"])
        shared = loci["shared_with_gwas"].to_numpy(bool) if "shared_with_gwas" in loci else np.zeros(len(loci), bool)
        gshared = gl["found_by_saliency"].to_numpy(bool)
        top_ax, bottom_ax = axes[2 * k, 0], axes[2 * k + 1, 0]
        top_ax.scatter(x, -np.log10(np.maximum(f["gwas_p"].to_numpy(float), 1e-300)), c=colours, s=6, linewidths=0)
        top_ax.set_ylabel("GWAS -log10 p")
        bottom_ax.scatter(x, f["saliency"], c=colours, s=6, linewidths=0)
        bottom_ax.set_ylabel("mean saliency")
        where = dict(zip(f["snp"], x))
        for ax, table, both in ((top_ax, gl, gshared), (bottom_ax, loci, shared)):
            for r, s in zip(table.itertuples(), both):
                ax.axvline(where[r.lead_snp], color="#b03a2e" if s else "#999999", lw=0.8, alpha=0.7)
            if ticks:
                ax.set_xticks([t for _, t in ticks], [c for c, _ in ticks], fontsize=7, rotation=90)
        name = f"{done[k].scores.attrs.get('dataset', '')}"
        top_ax.set_title(f"{name} mixed-model GWAS (top loci marked; red: also a top saliency locus)".strip(),
                         fontsize=9)
        bottom_ax.set_title("mean saliency (top loci marked; red: also a top GWAS locus)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


MODEL_COLOURS = {"cnn": "#1f4e79", "gblup_dosage": "#b5651d", "gblup_onehot": "#d9a05b", "ensemble": "#2e7d32"}
PANELS_PER_ROW = 3  # observed against predicted: models per row of a data set's grid


def plot_fold_pcc(log: pd.DataFrame, path: Path) -> None:
    """Per data set, the test PCC of every model in every fold (one point each, a line per
    fold joining the models, the mean as a bar): the publication's Figure 2 with the
    baselines and the ensemble beside the CNN; the best baseline's mean is a dashed
    reference line across the panel."""
    plt = pyplot()
    names = list(dict.fromkeys(log["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(1.6 + 2.4 * len(names), 4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        g = log[log["dataset"] == name]
        models = list(dict.fromkeys(g["model"]))
        wide = g.pivot(index="fold", columns="model", values="pcc")[models]
        for _, row in wide.iterrows():
            ax.plot(range(len(models)), row.to_numpy(), color="0.8", lw=0.8, zorder=1)
        for j, m in enumerate(models):
            ax.scatter(np.full(len(wide), j), wide[m], s=14, color=MODEL_COLOURS.get(m, "0.3"), zorder=2)
            ax.hlines(wide[m].mean(), j - 0.3, j + 0.3, color="black", lw=1.5, zorder=3)
        baselines = [m for m in models if m not in ("cnn", "ensemble")]
        if baselines:
            best = max(baselines, key=lambda m: wide[m].mean())
            ax.axhline(wide[best].mean(), color="0.35", lw=0.8, ls="--", zorder=0,
                       label=f"best baseline ({best}) mean")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(models)), [m.replace("_", "\n") for m in models], fontsize=8)
        ax.set_title(name)
        ax.set_xlim(-0.5, len(models) - 0.5)
    axes[0, 0].set_ylabel("test PCC per fold (bar: mean)")
    fig.tight_layout()
    save_figure(fig, path)


def regression_slope(pred: np.ndarray, observed: np.ndarray) -> float:
    """Slope of observed on predicted: 1 when predictions are on the phenotype's scale, below
    1 when they spread too widely (inflated), above 1 when they are shrunk too far.

    >>> regression_slope(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0]))
    1.0
    """
    v = np.var(pred)
    return float(np.cov(pred, observed, bias=True)[0, 1] / v) if v > 0 else float("nan")


def plot_observed_predicted(preds: pd.DataFrame, path: Path) -> None:
    """Observed against predicted for every test sample (``preds``: dataset, model, truth,
    prediction): per data set a grid of PANELS_PER_ROW models a row, each panel with the
    1:1 line (dashed), the regression of observed on predicted (solid) and, in its title,
    the PCC and that slope over all test folds; axes in the phenotype's units."""
    plt = pyplot()
    names = list(dict.fromkeys(preds["dataset"]))
    models = list(dict.fromkeys(preds["model"]))
    cols = min(PANELS_PER_ROW, len(models))
    per = -(-len(models) // cols)  # rows per data set
    fig, axes = plt.subplots(per * len(names), cols, figsize=(3.4 * cols, 3.3 * per * len(names)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, name in enumerate(names):
        for k, m in enumerate(models):
            g = preds[(preds["dataset"] == name) & (preds["model"] == m)]
            if g.empty:
                continue
            ax = axes[r * per + k // cols, k % cols]
            ax.set_axis_on()
            p, y = g["prediction"].to_numpy(float), g["truth"].to_numpy(float)
            ax.scatter(p, y, s=4, alpha=0.4, color=MODEL_COLOURS.get(m, "0.3"), linewidths=0)
            lo, hi = min(p.min(), y.min()), max(p.max(), y.max())
            ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="1:1")
            b = regression_slope(p, y) if len(g) > 1 else float("nan")
            if np.isfinite(b):
                xs = np.array([p.min(), p.max()])
                ax.plot(xs, y.mean() + b * (xs - p.mean()), color="black", lw=0.9, label="observed ~ predicted")
            pcc = np.corrcoef(p, y)[0, 1] if len(g) > 1 else float("nan")
            ax.set_title(f"{name}: {m}\nPCC {pcc:.3f}, slope {b:.2f}", fontsize=9)
            ax.set_xlabel("predicted (phenotype units)", fontsize=8)
            ax.set_ylabel("observed", fontsize=8)
            if k == 0:
                ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)


def query(run_dir, snps: list[str]) -> pd.DataFrame:
    run_dir = Path(run_dir)
    path = run_dir / SALIENCY_CSV
    if not path.exists():
        raise InputError(f"{path} not found; run `hpcsnp reduce --run {run_dir}` first")
    sal = pd.read_csv(path, keep_default_na=False, dtype={"snp": str, "chrom": str})
    known = set(sal["snp"])
    unknown = [s for s in snps if s not in known]
    if unknown:
        hints = []
        for s in unknown:
            close = difflib.get_close_matches(s, known, n=3, cutoff=0.6)
            hints.append(f"{s!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise InputError(f"unknown SNP name(s): {'; '.join(hints)}")
    n = sal.groupby("dataset")["snp"].transform("size")
    out = sal.assign(of=n)[sal["snp"].isin(snps)]
    order = {s: i for i, s in enumerate(snps)}
    return out.sort_values(["snp", "dataset"], key=lambda c: c.map(order) if c.name == "snp" else c)[
        ["dataset", "snp", "chrom", "pos", "saliency", "rank", "of"]]
