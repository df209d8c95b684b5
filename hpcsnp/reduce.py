"""Dask reduction of fold outputs: mean saliency, CV summary, top SNPs, plot, query.

Reads only finished fold directories (``fold_<i>`` with all files; a
``.partial`` one is half-written) and refuses a run with any fold missing,
naming the folds and the commands that redo them.  It is the only writer of
the run-level files.
"""

from __future__ import annotations

import contextlib
import difflib
from pathlib import Path

import numpy as np
import pandas as pd

from hpcsnp.atomic import atomic_write_text
from hpcsnp.errors import IncompleteRunError, InputError
from hpcsnp.rundir import read_json
from hpcsnp.store import peek_store_id

LOG_CSV = "fold_pcc_log.csv"
SUMMARY_CSV = "fold_pcc_summary.csv"
TOP_CSV = "top_saliency_snps.csv"
SALIENCY_CSV = "avg_saliency.csv"
PLOT_PNG = "avg_saliency_across_folds.png"
PAIRED_CSV = "paired_comparison.csv"
ENSEMBLE_CSV = "ensemble_weights.csv"
ENSEMBLE_PRED_CSV = "ensemble_predictions.csv"
WEIGHT_STEP = 0.05


def datasets_in(run_dir: Path) -> list[dict]:
    found = []
    for info in sorted(Path(run_dir).glob("*/dataset.json")):
        found.append(read_json(info))
    if not found:
        raise InputError(f"{run_dir}: no data sets found (expected RUN/<dataset>/dataset.json; "
                         "run `hpcsnp train` or `hpcsnp cv` first)")
    return found


def check_complete(run_dir: Path, datasets: list[dict]) -> None:
    """Every CNN fold of every data set is finished, readable, from the store write that
    dataset.json names, with finite metrics and the run's settings; else refuse, naming each
    fold and the command that redoes it with the run's settings."""
    from hpcsnp.rundir import CONFIG_JSON, fold_dir, fold_holder, is_complete, normalised_config, run_config

    wanted = run_config(run_dir)
    problems = []  # (dataset, fold, state, finished: whether redoing it needs --force)
    for ds in datasets:
        now = peek_store_id(ds["store"])
        if now is not None and ds.get("store_id") not in (None, now):
            raise InputError(f"{ds['store']} was re-ingested after {run_dir}/{ds['dataset']} was trained on it "
                             f"(store id {ds['store_id']}, now {now}): redo the data set from the new store with "
                             f"`hpcsnp cv {ds['store']} --run {run_dir} --config {run_dir}/config.json --force`, "
                             "or use "
                             "another --run")
        for i in range(1, ds["n_folds"] + 1):
            d = fold_dir(run_dir, ds["dataset"], i)
            if not is_complete(d):
                holder = fold_holder(d)
                if holder:
                    state = f"running now: {holder}"
                elif d.with_name(d.name + ".partial").exists():
                    state = "half-written: interrupted, a rerun resumes it"
                else:
                    state = "missing"
                problems.append((ds, i, state, False))
                continue
            state = _fold_problem(d / "metrics.json", ds, wanted)
            if state:
                problems.append((ds, i, state, True))
            elif wanted is None:
                first = read_json(d / "metrics.json").get("config")  # no config.json: folds must agree
                wanted = normalised_config(first) if first is not None else None
    if not problems:
        return
    config = Path(run_dir) / CONFIG_JSON
    with_config = f" --config {config}" if config.exists() else ""
    lines = [f"{run_dir}: {len(problems)} fold(s) not finished or not usable:"]
    for ds, i, state, finished in problems:
        lines.append(f"  {ds['dataset']} fold {i} ({state}):  hpcsnp train {ds['store']} --fold {i} "
                     f"--run {run_dir}" + (f" --name {ds['dataset']}" if _needs_name(ds) else "")
                     + with_config + (" --force" if finished else ""))
    folds = sorted({i for _, i, _, _ in problems})
    extra = " ".join(([f"--config {config}"] if config.exists() else [])
                     + (["--force"] if any(f for *_, f in problems) else []))
    stores = sorted({ds["store"] for ds, *_ in problems})
    names = {ds["dataset"] for ds, *_ in problems if _needs_name(ds)}
    if not names:
        env = f'HPCSNP_TRAIN_ARGS="{extra}" ' if extra else ""
        lines.append(f"  or on SLURM:  {env}sbatch --array={','.join(map(str, folds))} slurm/cv_array.sh "
                     f"{run_dir} " + " ".join(stores))
    raise IncompleteRunError("\n".join(lines), missing=[(ds["dataset"], i) for ds, i, *_ in problems])


def _needs_name(ds) -> bool:
    name = Path(ds["store"]).name
    return (name[:-5] if name.endswith(".zarr") else name) != ds["dataset"]


def _fold_problem(metrics_path: Path, ds: dict, wanted: dict | None) -> str | None:
    """Why a finished-looking fold cannot be merged, or None."""
    from hpcsnp.rundir import config_differences, normalised_config

    try:
        m = read_json(metrics_path)
    except InputError:
        return f"{metrics_path} is truncated or unreadable"
    if not all(isinstance(m.get(k), (int, float)) and np.isfinite(m[k]) for k in ("pcc", "mse", "mae")):
        return f"its metrics are not finite numbers (pcc {m.get('pcc')})"
    sid = m.get("store_id")
    if sid is not None and ds.get("store_id") is not None and sid != ds["store_id"]:
        return f"trained on another write of the store (store id {sid}, {ds['store']} is {ds['store_id']})"
    if wanted is not None and m.get("config") is not None:
        diff = config_differences(wanted, normalised_config(m["config"]))
        if diff:
            return "trained with other settings than the run's: " + "; ".join(diff) + " (run vs fold)"
    return None


@contextlib.contextmanager
def dask_context(scheduler: str = "threads", threads: int | None = None):
    """Run the reduction's Dask graphs on local threads (default), processes, synchronously,
    or on a distributed scheduler given by address (a dask-jobqueue SLURMCluster's, say)."""
    import dask

    if "://" in scheduler or scheduler.endswith(".json"):
        try:
            from distributed import Client
        except ImportError:
            raise InputError("--scheduler with an address needs dask.distributed "
                             "(pip install 'dask[distributed]')") from None
        if threads:
            import sys

            print("hpcsnp: warning: --threads ignored with a distributed scheduler (its workers have their own)",
                  file=sys.stderr)
        kw = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
        with Client(**kw, timeout="60s") as client:
            yield client
        return
    if scheduler not in ("threads", "processes", "synchronous"):
        raise InputError(f"unknown Dask scheduler {scheduler!r}: threads, processes, synchronous or an address")
    from hpcsnp.resources import granted_cpus

    with dask.config.set(scheduler=scheduler, num_workers=granted_cpus(threads)):
        yield None


def mean_saliency(run_dir: Path, dataset: str, n_folds: int, n_variants: int) -> tuple[np.ndarray, int]:
    """S_bar over every test sample of every fold: (sum of shard sums) / (sum of counts), by Dask."""
    import dask.array as da
    import zarr

    shards = []
    for i in range(1, n_folds + 1):
        path = Path(run_dir) / dataset / f"fold_{i}" / "saliency.zarr"
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
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    datasets = datasets_in(run_dir)
    check_complete(run_dir, datasets)
    log_rows, sal_frames, top_frames, weight_rows, ens_preds = [], [], [], [], []
    for ds in datasets:
        name = ds["dataset"]
        for i in range(1, ds["n_folds"] + 1):
            m = read_json(run_dir / name / f"fold_{i}" / "metrics.json")
            log_rows.append({"dataset": name, "model": "cnn", "fold": i, "pcc": m["pcc"], "mse": m["mse"],
                             "mae": m["mae"], "epochs": m["epochs"], "best_epoch": m["best_epoch"],
                             "seconds": round(m["seconds"], 2),
                             "saliency_seconds": round(m["saliency_seconds"], 2),
                             "n_test": m["n_test"], "peak_rss_mb": m.get("peak_rss_mb")})
        base = baseline_rows(run_dir, ds)
        log_rows += base
        ens = ensemble_folds(run_dir, ds, sorted({r["model"] for r in base}))
        log_rows += [r for r, _, _ in ens]
        weight_rows += [w for _, w, _ in ens]
        ens_preds += [p for _, _, p in ens]
        sal, count = mean_saliency(run_dir, name, ds["n_folds"], ds["n_variants"])
        var = pd.read_csv(run_dir / name / "variants.csv", keep_default_na=False,
                          dtype={"snp": str, "chrom": str})
        if len(var) != ds["n_variants"]:
            raise InputError(f"{run_dir / name / 'variants.csv'} lists {len(var)} SNPs, dataset.json says "
                             f"{ds['n_variants']}; rerun any fold of {name} to rewrite it")
        if count != ds["n_samples"]:
            raise InputError(f"{run_dir}/{name}: shards cover {count} samples, the store has {ds['n_samples']}")
        frame = var.assign(dataset=name, saliency=sal)
        frame["rank"] = frame["saliency"].rank(ascending=False, method="first").astype(int)
        sal_frames.append(frame[["dataset", "snp", "chrom", "pos", "saliency", "rank"]])
        top_frames.append(frame.nsmallest(top, "rank")[["dataset", "rank", "snp", "chrom", "pos", "saliency"]])
    log = pd.DataFrame(log_rows)
    summary = summarize(log)
    paired = paired_comparison(log)
    saliency = pd.concat(sal_frames, ignore_index=True)
    tops = pd.concat(top_frames, ignore_index=True)
    _write_csv(log, run_dir / LOG_CSV)
    _write_csv(summary, run_dir / SUMMARY_CSV)
    _write_csv(saliency, run_dir / SALIENCY_CSV)
    _write_csv(tops, run_dir / TOP_CSV)
    if len(paired):
        _write_csv(paired, run_dir / PAIRED_CSV)
    if weight_rows:
        _write_csv(pd.DataFrame(weight_rows), run_dir / ENSEMBLE_CSV)
        _write_csv(pd.concat(ens_preds, ignore_index=True), run_dir / ENSEMBLE_PRED_CSV)
    if plot:
        plot_saliency(saliency, run_dir / PLOT_PNG, label_top=min(top, 10))
    return {"log": log, "summary": summary, "top": tops, "saliency": saliency, "paired": paired}


def baseline_rows(run_dir: Path, ds: dict, warn=None) -> list[dict]:
    """Fold-log rows of each baseline that is complete for this data set; a partial one
    is left out with a warning naming the command that completes it."""
    import sys

    from hpcsnp.baseline import ENCODINGS

    warn = warn or (lambda m: print(f"hpcsnp: warning: {m}", file=sys.stderr))
    rows = []
    for enc in ENCODINGS:
        paths = [run_dir / ds["dataset"] / f"baseline_{enc}" / f"fold_{i}" / "metrics.json"
                 for i in range(1, ds["n_folds"] + 1)]
        have = [p for p in paths if p.exists()]
        if not have:
            continue
        if len(have) < len(paths):
            warn(f"{ds['dataset']}: baseline {enc} has {len(have)} of {len(paths)} folds; left out "
                 f"(complete it: hpcsnp baseline {ds['store']} --run {run_dir} --encoding {enc}"
                 + (f" --name {ds['dataset']})" if _needs_name(ds) else ")"))
            continue
        bad = [(p, why) for p in paths if (why := _fold_problem(p, ds, None))]
        if bad:
            warn(f"{ds['dataset']}: baseline {enc} left out: {bad[0][0].parent} is not usable ({bad[0][1]}); "
                 f"redo it: hpcsnp baseline {ds['store']} --run {run_dir} --encoding {enc} --force"
                 + (f" --name {ds['dataset']}" if _needs_name(ds) else ""))
            continue
        for i, p in enumerate(paths, start=1):
            m = read_json(p)
            rows.append({"dataset": ds["dataset"], "model": f"gblup_{enc}", "fold": i, "pcc": m["pcc"],
                         "mse": m["mse"], "mae": m["mae"], "seconds": round(m["seconds"], 2),
                         "saliency_seconds": 0.0, "n_test": m["n_test"]})
    return rows


def simplex_weights(k: int, step: float = WEIGHT_STEP) -> np.ndarray:
    """Every weight vector of length k with entries in multiples of ``step`` summing to 1."""
    m = int(round(1 / step))
    grid = [c for c in np.ndindex(*(m + 1,) * (k - 1)) if sum(c) <= m]
    return np.array([[*c, m - sum(c)] for c in grid], dtype=np.float64) / m


def ensemble_folds(run_dir: Path, ds: dict, baselines: list[str]) -> list[tuple[dict, dict, pd.DataFrame]]:
    """The ``ensemble`` model: per fold, a convex combination of the CNN's and the baselines'
    predictions, weights (a grid of step WEIGHT_STEP) chosen by the mean squared error on
    the validation fold, from models that did not see the validation phenotypes (the CNN
    only early-stops on them; the GBLUP is refitted on the training folds alone).  The test
    fold plays no part in the choice.  Each baseline's test predictions are its usual ones
    (fitted on training + validation).  Returns (log row, weight row, test predictions) per
    fold; nothing when a fold lacks validation predictions (runs older than this)."""
    name = ds["dataset"]
    models = ["cnn", *baselines]
    if len(models) < 2:
        return []
    dirs = {"cnn": lambda i: run_dir / name / f"fold_{i}"}
    dirs.update({b: (lambda i, b=b: run_dir / name / f"baseline_{b.removeprefix('gblup_')}" / f"fold_{i}")
                 for b in baselines})
    out = []
    grid = simplex_weights(len(models))
    from hpcsnp.metrics import regression_metrics

    for i in range(1, ds["n_folds"] + 1):
        if not all((dirs[m](i) / "val_predictions.csv").exists() for m in models):
            return []
        val = _aligned([pd.read_csv(dirs[m](i) / "val_predictions.csv", dtype={"sample_id": str}) for m in models])
        test = _aligned([pd.read_csv(dirs[m](i) / "predictions.csv", dtype={"sample_id": str}) for m in models])
        mse = (((val["P"] @ grid.T) - val["truth"][:, None]) ** 2).mean(axis=0)
        w = grid[int(np.argmin(mse))]
        pred = test["P"] @ w
        m = regression_metrics(test["truth"], pred)
        secs = sum(read_json(dirs[k](i) / "metrics.json")["seconds"] for k in models)
        row = {"dataset": name, "model": "ensemble", "fold": i, **m, "seconds": round(secs, 2),
               "saliency_seconds": 0.0, "n_test": len(pred)}
        vm = regression_metrics(val["truth"], val["P"] @ w)
        weights = {"dataset": name, "fold": i, **{f"w_{k}": v for k, v in zip(models, w)},
                   "val_mse": vm["mse"], "val_pcc": vm["pcc"],
                   **{f"val_pcc_{k}": regression_metrics(val["truth"], val["P"][:, j])["pcc"]
                      for j, k in enumerate(models)}}
        preds = pd.DataFrame({"dataset": name, "fold": i, "sample_id": test["ids"], "truth": test["truth"],
                              "prediction": pred})
        out.append((row, weights, preds))
    return out


def _aligned(frames: list[pd.DataFrame]) -> dict:
    """Predictions of several models for the same samples, as columns of one matrix."""
    ids = frames[0]["sample_id"].to_numpy()
    cols = []
    for f in frames:
        f = f.set_index("sample_id")
        if len(f) != len(ids) or not f.index.isin(ids).all():
            raise InputError("ensemble: the models' prediction files cover different samples")
        cols.append(f.loc[ids, "prediction"].to_numpy(np.float64))
    return {"ids": ids, "truth": frames[0]["truth"].to_numpy(np.float64), "P": np.column_stack(cols)}


def paired_comparison(log: pd.DataFrame) -> pd.DataFrame:
    """Per data set and model (CNN, ensemble): PCC minus the better baseline's (higher mean
    PCC), fold by fold."""
    rows = []
    for name, g in log.groupby("dataset", sort=False):
        base = g[g["model"].str.startswith("gblup_")]
        if base.empty:
            continue
        best = base.groupby("model")["pcc"].mean().idxmax()
        b = base[base["model"] == best].set_index("fold")["pcc"]
        for model in ("cnn", "ensemble"):
            ours = g[g["model"] == model].set_index("fold")["pcc"]
            if ours.empty:
                continue
            d = (ours - b).dropna()
            rows.append({"dataset": name, "model": model, "baseline": best, "n_folds": len(d),
                         "model_pcc_mean": ours.mean(), "baseline_pcc_mean": b.mean(), "diff_mean": d.mean(),
                         "diff_sd": d.std(ddof=1) if len(d) > 1 else float("nan"),
                         "diff_se": d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan"),
                         "folds_better": int((d > 0).sum())})
    return pd.DataFrame(rows)


def summarize(log: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (name, model), g in log.groupby(["dataset", "model"], sort=False):
        row = {"dataset": name, "model": model, "n_folds": len(g)}
        for k in ("pcc", "mse", "mae"):
            row[f"{k}_mean"] = g[k].mean()
            row[f"{k}_sd"] = g[k].std(ddof=1) if len(g) > 1 else float("nan")
        row["seconds_total"] = g["seconds"].sum() + g["saliency_seconds"].fillna(0).sum()
        rows.append(row)
    return pd.DataFrame(rows)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6g"))


def genome_x(frame: pd.DataFrame) -> tuple[np.ndarray, list]:
    """x coordinate along the genome: chromosome blocks in file order, positions within;
    SNP index where names gave no position.  Returns x and (label, centre) ticks."""
    if (frame["pos"] < 0).any():
        return np.arange(len(frame), dtype=float), []
    x = np.empty(len(frame))
    ticks, offset = [], 0.0
    for chrom, g in frame.groupby("chrom", sort=False):
        pos = g["pos"].to_numpy(float)
        x[g.index.to_numpy() - frame.index[0]] = offset + pos - pos.min()
        span = max(pos.max() - pos.min(), 1.0)
        ticks.append((chrom, offset + span / 2))
        offset += span * 1.02
    return x, ticks


def plot_saliency(saliency: pd.DataFrame, path: Path, label_top: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(saliency["dataset"]))
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        f = saliency[saliency["dataset"] == name].reset_index(drop=True)
        x, ticks = genome_x(f)
        chrom_idx = pd.factorize(f["chrom"])[0]
        colours = np.where(chrom_idx % 2 == 0, "#1f4e79", "#7fa7cf")
        ax.scatter(x, f["saliency"], c=colours, s=6, linewidths=0)
        for _, r in f.nsmallest(label_top, "rank").iterrows():
            i = r.name
            ax.annotate(r["snp"], (x[i], r["saliency"]), fontsize=7, rotation=30,
                        xytext=(2, 3), textcoords="offset points")
        ax.set_title(f"{name}: mean saliency over all test samples of all folds")
        ax.set_ylabel("mean max|df/dx|")
        if ticks:
            ax.set_xticks([t for _, t in ticks], [c for c, _ in ticks], fontsize=7, rotation=90)
        else:
            ax.set_xlabel("SNP index")
        ax.set_xlim(x.min() - 1, x.max() + 1)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def query(run_dir, snps: list[str]) -> pd.DataFrame:
    run_dir = Path(run_dir)
    path = run_dir / SALIENCY_CSV
    if not path.exists():
        raise InputError(f"{path} not found; run `hpcsnp reduce {run_dir}` first")
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
