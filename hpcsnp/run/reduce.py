"""The reduction of a run: checks every fold, merges the shards (Dask), and writes the
run-level tables and figures.

Reads only finished fold directories (``fold_<i>`` with all files; a
``.partial`` one is half-written) and refuses a run with any fold missing or
unusable, naming the folds and the commands that redo them.  It is the only
writer of the run-level files; the ensemble lives in ``ensemble``, the figures
and ``query`` in ``report``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hpcsnp.atomic import atomic_write_text
from hpcsnp.config import COMBINED, COMBINED_PARTS, Config
from hpcsnp.errors import IncompleteRunError, InputError
from hpcsnp.metrics import all_finite
from hpcsnp.models import KINDS, LINEAR_MODELS, model_name
from hpcsnp.resources import dask_context  # noqa: F401 - the reduce verb and tests import it from here
from hpcsnp.run.ensemble import ensemble_folds
from hpcsnp.run.html import write_report
from hpcsnp.run.ranking import rank_dataset
from hpcsnp.run.report import (
    SALIENCY_CSV,
    plot_attribution_vs_gwas,
    plot_fold_pcc,
    plot_observed_predicted,
    plot_saliency,
)
from hpcsnp.rundir import (
    METRICS_JSON,
    PREDICTIONS_CSV,
    DatasetRecord,
    FoldMetrics,
    RunDir,
    config_differences,
    normalised_config,
    shard_file,
)
from hpcsnp.store import peek_store_id
from hpcsnp.traits import base_store_id

logger = logging.getLogger(__name__)

LOG_CSV = "fold_pcc_log.csv"
SUMMARY_CSV = "fold_pcc_summary.csv"
TOP_CSV = "top_saliency_snps.csv"
PLOT_PNG = "avg_saliency_across_folds.png"
PAIRED_CSV = "paired_comparison.csv"
ENSEMBLE_CSV = "ensemble_weights.csv"
ENSEMBLE_PRED_CSV = "ensemble_predictions.csv"
FOLD_PCC_PNG = "fold_pcc.png"
OBS_PRED_PNG = "observed_vs_predicted.png"
# the loci and attribution tables: tab-separated, PLINK 2's names and "." for a missing value
# (as gwas.tsv), so tools that read PLINK 2's output read them
LOCI_TSV = "top_loci.tsv"
STABILITY_TSV = "attribution_stability.tsv"
ATTRIBUTION_TSV = "attribution_summary.tsv"
VS_GWAS_TSV = "attribution_vs_gwas.tsv"
LEGACY_TABLES = ("top_loci.csv", "attribution_stability.csv", "attribution_summary.csv", "attribution_vs_gwas.csv")
# per-SNP rows: the SNP's columns first, as PLINK 2 names them (the lead SNP of a locus)
SNP_COLUMNS = {"chrom": "#CHROM", "pos": "POS", "snp": "ID", "ref": "REF", "alt": "ALT"}
LOCUS_COLUMNS = {"chrom": "#CHROM", "lead_pos": "POS", "lead_snp": "ID", "ref": "REF", "alt": "ALT",
                 "lead_score": "SCORE", "lead_rank": "RANK", "lead_gwas_p": "GWAS_P"}
VS_GWAS_PNG = "attribution_vs_gwas.png"


def datasets_in(run_dir) -> list[dict]:
    found = RunDir(run_dir).datasets()
    if not found:
        raise InputError(f"{run_dir}: no data sets found (expected RUN/<dataset>/dataset.json; "
                         "run `hpcsnp train` or `hpcsnp cv` first)")
    return found


def check_complete(run_dir, datasets: list[dict]) -> None:
    """Every CNN fold of every data set is finished, readable, from the store write that
    dataset.json names, with finite metrics and the run's settings; else refuse, naming each
    fold and the command that redoes it with the run's settings."""

    run = RunDir(run_dir)
    wanted = run.config()
    problems = []  # (dataset, fold, state, finished: whether redoing it needs --force)
    for ds in datasets:
        now = peek_store_id(ds.store)
        if now is not None and base_store_id(ds.store_id) not in (None, now):
            raise InputError(f"{ds.store} was re-ingested after {run_dir}/{ds.dataset} was trained on it "
                             f"(store id {ds.store_id}, now {now}): redo the data set from the new store with "
                             f"`hpcsnp cv {ds.store_args} --run {run_dir} --config {run.config_path} --force`, "
                             "or use another --run")
        for i in range(1, ds.n_folds + 1):
            if not run.is_complete(ds.dataset, i):
                holder = run.holder(ds.dataset, i)
                if holder:
                    state = f"running now: {holder}"
                elif run.partial(ds.dataset, i).exists():
                    state = "half-written: interrupted, a rerun resumes it"
                else:
                    state = "missing"
                problems.append((ds, i, state, False))
                continue
            metrics = run.fold(ds.dataset, i) / METRICS_JSON
            state = _fold_problem(metrics, ds, wanted)
            if state:
                problems.append((ds, i, state, True))
            elif wanted is None:
                first = FoldMetrics.read(metrics).config  # no config.json: folds must agree
                wanted = normalised_config(first) if first is not None else None
    if not problems:
        return
    config = run.config_path
    with_config = f" --config {config}" if config.exists() else ""
    lines = [f"{run_dir}: {len(problems)} fold(s) not finished or not usable:"]
    for ds, i, state, finished in problems:
        lines.append(f"  {ds.dataset} fold {i} ({state}):  hpcsnp train {ds.store_args} --fold {i} "
                     f"--run {run_dir}" + (f" --name {ds.dataset}" if _needs_name(ds) else "")
                     + with_config + (" --force" if finished else ""))
    folds = sorted({i for _, i, _, _ in problems})
    extra = " ".join(([f"--config {config}"] if config.exists() else [])
                     + (["--force"] if any(f for *_, f in problems) else []))
    stores = sorted({ds.store for ds, *_ in problems})
    tables = {(ds.pheno, ds.covar, tuple(ds.covar_names or ())) for ds, *_ in problems}
    # cv_array.sh names data sets after their stores (and traits), with one trait and covariate table
    if not any(_needs_name(ds) for ds, *_ in problems) and len(tables) == 1:
        from shlex import quote

        pheno, covar, names = tables.pop()
        env = f'HPCSNP_TRAIN_ARGS="{extra}" ' if extra else ""
        if pheno:
            traits = sorted({ds.trait for ds, *_ in problems})
            env += f"HPCSNP_PHENO={quote(pheno)} HPCSNP_TRAITS={quote(','.join(traits))} "
        if covar:
            env += f"HPCSNP_COVAR={quote(covar)} " + (f"HPCSNP_COVAR_NAMES={quote(','.join(names))} " if names else "")
        lines.append(f"  or on SLURM:  {env}sbatch --array={','.join(map(str, folds))} slurm/cv_array.sh "
                     f"{run_dir} " + " ".join(stores))
    raise IncompleteRunError("\n".join(lines), missing=[(ds.dataset, i) for ds, i, *_ in problems])


def _needs_name(ds) -> bool:
    return not ds.default_name


def _fold_problem(metrics_path: Path, ds: DatasetRecord, wanted: dict | None) -> str | None:
    """Why a finished-looking fold cannot be merged, or None."""

    try:
        m = FoldMetrics.read(metrics_path)
    except InputError:
        return f"{metrics_path} is truncated or unreadable"
    if not all_finite(m.raw):
        return f"its metrics are not finite numbers (pcc {m.pcc})"
    sid = m.store_id
    if sid is not None and ds.store_id is not None and sid != ds.store_id:
        return f"trained on another write of the store (store id {sid}, {ds.store} is {ds.store_id})"
    if wanted is not None and m.config is not None:
        diff = config_differences(wanted, normalised_config(m.config))
        if diff:
            return "trained with other settings than the run's: " + "; ".join(diff) + " (run vs fold)"
    if m.config is not None:
        missing = [f for f in map(shard_file, _attributions(m.config)) if not (metrics_path.parent / f).exists()]
        if missing:
            return f"half-written: {', '.join(missing)} of its configured attributions missing"
    return None


def _attributions(config: dict) -> list[str]:
    """The attribution methods a fold's recorded settings computed."""

    try:
        return Config.from_dict(normalised_config(config)).attribution_methods()
    except InputError:  # settings of another version: at least the saliency
        return ["saliency"]


def mean_saliency(run_dir, dataset: str, n_folds: int, n_variants: int) -> tuple[np.ndarray, int]:
    """S_bar over every test sample of every fold: (sum of shard sums) / (sum of counts), by Dask."""
    import dask.array as da
    import zarr

    shards = []
    for i in range(1, n_folds + 1):
        path = RunDir(run_dir).shard(dataset, i, "saliency")
        try:
            shards.append(zarr.open_array(str(path), mode="r"))
        except Exception as e:  # noqa: BLE001 - zarr raises several types for a damaged array
            raise InputError(f"{path}: saliency shard cannot be read ({e}); redo the fold with --force") from None
        if shards[-1].shape != (n_variants,):
            raise InputError(f"{path}: saliency shard has shape {shards[-1].shape}, the data set has {n_variants} "
                             "SNPs (the fold comes from another store); redo it with --force")
    total = da.stack([da.from_zarr(s) for s in shards]).sum(axis=0)
    count = sum(int(s.attrs["n_samples"]) for s in shards)
    return (total / count).compute(), count


def reduce_run(run_dir, top: int = 20, *, plot: bool = True) -> dict:
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    datasets = datasets_in(run.path)
    check_complete(run.path, datasets)
    log_rows, sal_frames, top_frames, weight_rows, ens_preds, test_preds = [], [], [], [], [], []
    rankings = []
    for ds in datasets:
        name = ds.dataset
        first_row = len(log_rows)
        for i in range(1, ds.n_folds + 1):
            m = FoldMetrics.read(run.fold(name, i) / METRICS_JSON)
            log_rows.append({"dataset": name, "model": "cnn", "fold": i, "pcc": m.pcc, "mse": m.mse,
                             "mae": m.mae, "epochs": m.epochs, "best_epoch": m.best_epoch,
                             "seconds": round(m.seconds, 2),
                             "saliency_seconds": round(m.saliency_seconds, 2),
                             "n_test": m.n_test, "peak_rss_mb": m.peak_rss_mb})
        base = baseline_rows(run.path, ds)
        if not base:
            logger.info(f"{name}: no baseline on these folds, so no linear yardstick and no ensemble (fit them: "
                        f"hpcsnp baseline {ds.store_args} --run {run.path}" + (f" --dataset {name})" if _needs_name(ds)
                                                                            else ")"))
        log_rows += base
        ens = ensemble_folds(run.path, ds, sorted({r["model"] for r in base}))
        log_rows += [r for r, _, _ in ens]
        weight_rows += [w for _, w, _ in ens]
        ens_preds += [p for _, _, p in ens]
        if run.groups_csv(name).exists():
            add_within_group_pcc(run, name, log_rows[first_row:], ens)
        if plot:
            test_preds.append(_test_predictions(run, ds, sorted({r["model"] for r in base}), ens))
        sal, count = mean_saliency(run.path, name, ds.n_folds, ds.n_variants)
        var = pd.read_csv(run.variants_csv(name), keep_default_na=False, dtype={"snp": str, "chrom": str})
        if len(var) != ds.n_variants:
            raise InputError(f"{run.variants_csv(name)} lists {len(var)} SNPs, dataset.json says "
                             f"{ds.n_variants}; rerun any fold of {name} to rewrite it")
        if count != ds.n_samples:
            raise InputError(f"{run_dir}/{name}: shards cover {count} samples, the data set's folds "
                             f"have {ds.n_samples}")
        frame = var.assign(dataset=name, saliency=sal)
        frame["rank"] = frame["saliency"].rank(ascending=False, method="first").astype(int)
        ranking = rank_dataset(run, ds, var, sal, top)
        rankings.append(ranking)
        extra = [c for c in ranking.scores.columns if c not in ("snp", "chrom", "pos", "saliency", "saliency_rank")]
        sal_frames.append(pd.concat([frame[["dataset", "snp", "chrom", "pos", "saliency", "rank"]],
                                     ranking.scores[extra]], axis=1))
        lead = lead_method(ranking.scores)
        tops_ = top_table(frame, ranking.scores, lead, top)
        stab = pd.DataFrame([r for r in ranking.stability if r["method"] == lead])
        if len(stab):
            tops_ = tops_.merge(stab[["snp", "locus", "folds_in_top", "n_folds", "fold_score_sd"]], on="snp",
                                how="left")
        top_frames.append(tops_)
    log = pd.DataFrame(log_rows)
    summary = summarize(log)
    paired = paired_comparison(log)
    saliency = pd.concat(sal_frames, ignore_index=True)
    tops = pd.concat(top_frames, ignore_index=True)
    _write_csv(log, run.output(LOG_CSV))
    _write_csv(summary, run.output(SUMMARY_CSV))
    _write_csv(saliency, run.output(SALIENCY_CSV))
    _write_csv(tops, run.output(TOP_CSV))
    if len(paired):
        _write_csv(paired, run.output(PAIRED_CSV))
    if weight_rows:
        _write_csv(pd.DataFrame(weight_rows), run.output(ENSEMBLE_CSV))
        _write_csv(pd.concat(ens_preds, ignore_index=True), run.output(ENSEMBLE_PRED_CSV))
    _write_ranking_tables(run, rankings)
    if plot:
        leads = [r["lead_snp"] for g in rankings for r in g.loci if r["method"] == lead_method(g.scores)]
        plot_saliency(saliency, run.output(PLOT_PNG), label_top=min(top, 10), labels=leads or None)
        if any(g.gwas is not None for g in rankings):
            plot_attribution_vs_gwas(rankings, run.output(VS_GWAS_PNG))
        plot_fold_pcc(log, run.output(FOLD_PCC_PNG))
        plot_observed_predicted(pd.concat(test_preds, ignore_index=True), run.output(OBS_PRED_PNG))
    write_report(run.path)
    return {"log": log, "summary": summary, "top": tops, "saliency": saliency, "paired": paired}


def lead_method(scores: pd.DataFrame) -> str:
    """The ranking reduce leads with: ``combined`` where the folds computed its parts, else saliency."""
    return COMBINED if COMBINED in scores else "saliency"


def top_table(frame: pd.DataFrame, scores: pd.DataFrame, lead: str, top: int) -> pd.DataFrame:
    """top_saliency_snps.csv's rows of one data set: its ``top`` SNPs by the lead ranking, with
    the saliency (and, when the lead is ``combined``, its other part and itself) of each."""
    if lead == "saliency":
        return frame.nsmallest(top, "rank")[["dataset", "rank", "snp", "chrom", "pos", "saliency"]]
    rows = scores.nsmallest(top, f"{lead}_rank").index
    out = frame.loc[rows, ["dataset", "snp", "chrom", "pos", "saliency"]]
    return out.assign(rank=scores.loc[rows, f"{lead}_rank"].to_numpy(),
                      **{c: scores.loc[rows, c].to_numpy() for c in (*COMBINED_PARTS[1:], lead)})[
        ["dataset", "rank", "snp", "chrom", "pos", "saliency", *COMBINED_PARTS[1:], lead]]


def _write_ranking_tables(run: RunDir, rankings) -> None:
    """top_loci.tsv, attribution_stability.tsv, attribution_summary.tsv and, where a GWAS was
    run, attribution_vs_gwas.tsv (loci of the GWAS itself as method 'gwas'); the .csv tables an
    older reduce wrote are removed."""
    loci = [r for g in rankings for r in _with_alleles(g.loci, g.alleles, "lead_snp")]
    loci += [r for g in rankings if g.gwas_loci is not None
             for r in _with_alleles(g.gwas_loci.assign(method="gwas").to_dict("records"), g.alleles, "lead_snp")]
    stability = [r for g in rankings for r in _with_alleles(g.stability, g.alleles, "snp")]
    for rows, name, lead in ((loci, LOCI_TSV, LOCUS_COLUMNS), (stability, STABILITY_TSV, SNP_COLUMNS),
                             ([r for g in rankings for r in g.summary], ATTRIBUTION_TSV, {}),
                             ([r for g in rankings for r in g.vs_gwas], VS_GWAS_TSV, {})):
        if rows:
            _write_tsv(plink_style(pd.DataFrame(rows), lead), run.output(name))
    for old in LEGACY_TABLES:
        run.output(old).unlink(missing_ok=True)


def _with_alleles(rows: list, alleles: pd.DataFrame | None, key: str) -> list:
    """``rows`` with the REF and ALT of their SNP (``key``), "" where the store knows none."""
    if alleles is None:
        return [{**r, "ref": "", "alt": ""} for r in rows]
    return [{**r, "ref": alleles.at[r[key], "ref"], "alt": alleles.at[r[key], "alt"]} for r in rows]


def plink_style(frame: pd.DataFrame, lead: dict) -> pd.DataFrame:
    """PLINK 2's conventions: the SNP's columns first under its names (``lead`` maps ours to
    PLINK 2's), then the data set and method, the others upper-case; an unknown allele is ".".

    >>> t = pd.DataFrame({"dataset": ["a"], "snp": ["s1"], "chrom": ["1"], "pos": [5], "ref": [""], "alt": ["G"],
    ...                   "folds_in_top": [3]})
    >>> list(plink_style(t, SNP_COLUMNS).columns), plink_style(t, SNP_COLUMNS)["REF"].tolist()
    (['#CHROM', 'POS', 'ID', 'REF', 'ALT', 'DATASET', 'FOLDS_IN_TOP'], ['.'])
    """
    ident = [c for c in lead if c in frame and lead[c] in SNP_COLUMNS.values()]
    front = [c for c in ("dataset", "method") if c in frame]
    out = frame[ident + front + [c for c in frame if c not in ident and c not in front]].copy()
    for c in ("ref", "alt"):
        if c in out:
            out[c] = out[c].replace("", ".")
    return out.rename(columns={c: lead.get(c, c.upper()) for c in out.columns})


def read_plink_style(path: Path) -> pd.DataFrame:
    """A table ``plink_style`` wrote, as written ("." read as missing)."""
    return pd.read_csv(path, sep="\t", dtype={"ID": str, "#CHROM": str, "REF": str, "ALT": str},
                       keep_default_na=False, na_values=["."])


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(sep="\t", index=False, na_rep=".", float_format="%.6g"))


MIN_GROUP = 5  # lines of a group in a test fold for its within-group PCC to count


def within_group_pcc(truth, pred, groups, min_size: int = MIN_GROUP) -> float:
    """Mean over groups (e.g. families) with at least ``min_size`` lines of the PCC inside
    the group: the accuracy that is left once differences between group means are taken
    away.  Lines whose group is '' are left out; nan when no group qualifies.

    >>> within_group_pcc([1, 2, 3, 10, 11, 12], [3, 2, 1, 0, 1, 2], ["a"] * 3 + ["b"] * 3, min_size=3)
    0.0
    """
    frame = pd.DataFrame({"t": np.asarray(truth, float), "p": np.asarray(pred, float), "g": list(groups)})
    pccs = []
    for _, part in frame[frame["g"] != ""].groupby("g"):
        if len(part) >= min_size and part["t"].std() > 0 and part["p"].std() > 0:
            pccs.append(np.corrcoef(part["t"], part["p"])[0, 1])
    return float(np.mean(pccs)) if pccs else float("nan")


def add_within_group_pcc(run: RunDir, dataset: str, rows: list[dict], ens) -> None:
    """Add ``within_group_pcc`` to the fold-log rows of one data set (every model)."""
    groups = pd.read_csv(run.groups_csv(dataset), dtype=str, keep_default_na=False).set_index("sample_id")["group"]
    ensemble = {int(p["fold"].iloc[0]): p for _, _, p in ens}
    for row in rows:
        if row["model"] == "ensemble":
            f = ensemble[row["fold"]]
        else:
            f = pd.read_csv(run.model_fold(dataset, row["model"], row["fold"]) / PREDICTIONS_CSV,
                            dtype={"sample_id": str})
        row["within_group_pcc"] = within_group_pcc(f["truth"], f["prediction"],
                                                   groups.reindex(f["sample_id"]).fillna(""))


def _test_predictions(run: RunDir, ds: DatasetRecord, baselines: list[str], ens) -> pd.DataFrame:
    """Every model's test predictions of one data set (dataset, model, truth, prediction)."""
    name, frames = ds.dataset, []
    for model in ["cnn", *baselines]:
        for i in range(1, ds.n_folds + 1):
            f = pd.read_csv(run.model_fold(name, model, i) / PREDICTIONS_CSV, usecols=["truth", "prediction"])
            frames.append(f.assign(dataset=name, model=model))
    frames += [p[["truth", "prediction"]].assign(dataset=name, model="ensemble") for _, _, p in ens]
    return pd.concat(frames, ignore_index=True)


def baseline_rows(run_dir: Path, ds: DatasetRecord) -> list[dict]:
    """Fold-log rows of each baseline that is complete for this data set; a partial one
    is left out with a warning naming the command that completes it."""


    rows, run = [], RunDir(run_dir)
    for enc in KINDS:
        paths = [run.baseline(ds.dataset, enc, i) / METRICS_JSON for i in range(1, ds.n_folds + 1)]
        have = [p for p in paths if p.exists()]
        if not have:
            continue
        if len(have) < len(paths):
            logger.warning(f"{ds.dataset}: baseline {enc} has {len(have)} of {len(paths)} folds; left out "
                 f"(complete it: hpcsnp baseline {ds.store_args} --run {run_dir} --encoding {enc}"
                 + (f" --name {ds.dataset})" if _needs_name(ds) else ")"))
            continue
        bad = [(p, why) for p in paths if (why := _fold_problem(p, ds, None))]
        if bad:
            logger.warning(f"{ds.dataset}: baseline {enc} left out: {bad[0][0].parent} is not usable ({bad[0][1]}); "
                 f"redo it: hpcsnp baseline {ds.store_args} --run {run_dir} --encoding {enc} --force"
                 + (f" --name {ds.dataset}" if _needs_name(ds) else ""))
            continue
        for i, p in enumerate(paths, start=1):
            m = FoldMetrics.read(p)
            rows.append({"dataset": ds.dataset, "model": model_name(enc), "fold": i, "pcc": m.pcc,
                         "mse": m.mse, "mae": m.mae, "seconds": round(m.seconds, 2),
                         "saliency_seconds": 0.0, "n_test": m.n_test})
    return rows




def paired_comparison(log: pd.DataFrame) -> pd.DataFrame:
    """Per data set, fold by fold PCC differences against two yardsticks: the better linear
    baseline (GBLUP in either encoding), for the CNN, the ensemble and every non-linear
    baseline (RKHS); and, when a non-linear baseline is better still, that one, for the
    CNN and the ensemble."""
    rows = []
    for name, g in log.groupby("dataset", sort=False):
        base = [m for m in g["model"].unique() if m not in ("cnn", "ensemble")]
        if not base:
            continue
        means = g[g["model"].isin(base)].groupby("model")["pcc"].mean()
        linear = [m for m in base if m in LINEAR_MODELS]
        yardsticks = [means[linear].idxmax()] if linear else []
        if means.idxmax() not in yardsticks:
            yardsticks.append(means.idxmax())
        for yard in yardsticks:
            b = g[g["model"] == yard].set_index("fold")["pcc"]
            others = [m for m in base if m not in LINEAR_MODELS] if yard in LINEAR_MODELS else []
            for model in ("cnn", "ensemble", *others):
                ours = g[g["model"] == model].set_index("fold")["pcc"]
                if ours.empty or model == yard:
                    continue
                d = (ours - b).dropna()
                rows.append({"dataset": name, "model": model, "baseline": yard, "n_folds": len(d),
                             "model_pcc_mean": ours.mean(), "baseline_pcc_mean": b.mean(), "diff_mean": d.mean(),
                             "diff_sd": d.std(ddof=1) if len(d) > 1 else float("nan"),
                             "diff_se": d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan"),
                             "folds_better": int((d > 0).sum())})
    return pd.DataFrame(rows)


def summarize(log: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (name, model), g in log.groupby(["dataset", "model"], sort=False):
        row = {"dataset": name, "model": model, "n_folds": len(g)}
        for k in ("pcc", "within_group_pcc", "mse", "mae"):
            if k not in g or g[k].isna().all():
                continue
            row[f"{k}_mean"] = g[k].mean()
            row[f"{k}_sd"] = g[k].std(ddof=1) if len(g) > 1 else float("nan")
        row["seconds_total"] = g["seconds"].sum() + g["saliency_seconds"].fillna(0).sum()
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))


