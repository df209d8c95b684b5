"""Predict new, unphenotyped lines from a finished run: ``hpcsnp predict --run RUN GENOTYPES``.

No retraining: every fold's CNN predicts every new line (one compiled call runs all the
fold models on a batch); their mean is ``cnn_mean`` and their spread ``cnn_sd``.  Each
GBLUP encoding the run has is refitted once on all phenotyped lines of the store (REML
shrinkage, the same machinery as the baseline) and kept in marker-effect form, so a new
line needs only its own genotypes: prediction = mu + (x - m)' beta with
beta = Z' (K + delta I)^-1 (y - mu) / p.  Each RKHS baseline is refitted the same way
with the distance and bandwidth its folds chose most often, and predicts from kernel
values between the new line and the fitting lines.  Refits are cached in the run
directory.
The headline ``prediction`` is the ensemble of the CNN mean and the baselines with the
weights chosen on the run's validation folds (each fold's weights, as ``reduce``
computes them, averaged over the folds); without a baseline it is the CNN mean.

Each headline prediction comes with an interval at ``level`` (default 90 %): the
headline +- the ceil((n + 1) level)-th smallest of the n absolute out-of-fold residuals
of the headline in the run's cross-validation (each line predicted by the fold models
that did not see it).  This is split-conformal prediction (Vovk et al. 2005; Lei et al.
2018) with the cross-validation's test folds as the calibration set, as in CV+ (Barber et
al. 2021), simplified to one width around the all-fold prediction; the width is the same
for every line, so it states how far the run's predictions of unseen lines typically
miss, not which lines are harder.  It holds for new lines drawn like the run's own; for a
new population it is optimistic.

The input is streamed in blocks of lines (see ``newlines``), so memory does not grow
with the number of new lines; the output is written only when every line is predicted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcsnp.atomic import atomic_write_text, check_writable, remove_stale_files, tmp_name
from hpcsnp.config import Config
from hpcsnp.errors import InputError
from hpcsnp.io.newlines import VariantMeta, align, check_overlap, open_new_lines
from hpcsnp.linear.refit import prediction_error_variance, refitted
from hpcsnp.models import BASELINE_MODELS, LINEAR_MODELS, baseline_kind
from hpcsnp.resources import cap_threads, configure_tensorflow
from hpcsnp.run.ensemble import ensemble_folds
from hpcsnp.run.reduce import baseline_rows, check_complete
from hpcsnp.rundir import METRICS_JSON, MODEL_KERAS, PREDICTIONS_CSV, DatasetRecord, FoldMetrics, RunDir, read_json

logger = logging.getLogger(__name__)

EXPLAIN_TOP = 10
COLUMNS = ["sample_id", "prediction", "lower", "upper", "rank", "cnn_mean", "cnn_sd", *BASELINE_MODELS,
           "observed_fraction"]
LEVEL = 0.9  # the prediction interval's default coverage
PEV_COLUMNS = ("pev", "reliability")  # --pev: <gblup column>_pev, <gblup column>_reliability
RANK_BY = ("high", "low")  # rank 1: the highest or the lowest prediction


def choose_dataset(run: RunDir, name: str | None) -> DatasetRecord:
    """The data set to predict with: ``name``, or the run's only one."""
    found = run.datasets()
    if not found:
        raise InputError(f"{run}: no data sets in this run (expected RUN/<dataset>/dataset.json; "
                         "run `hpcsnp cv STORE --run RUN` first)")
    names = [d.dataset for d in found]
    if name is None:
        if len(found) > 1:
            raise InputError(f"{run} holds {len(found)} data sets ({', '.join(names)}): choose one with --dataset")
        return found[0]
    for d in found:
        if d.dataset == name:
            return d
    raise InputError(f"{run}: no data set {name!r} (it holds {', '.join(names)})")


# --- the fold CNNs --------------------------------------------------------------------

class FoldModels:
    """Every fold's saved model, run together: one compiled call maps an int8 batch to each
    model's prediction in phenotype units [folds, batch]; ``explain`` adds the top SNPs of
    each line by saliency of the CNN mean (max over channels of |d cnn_mean / d x|, the
    run's attribution, here in phenotype units)."""

    def __init__(self, run: RunDir, dataset: str, folds: list[int], n_variants: int):
        import tensorflow as tf

        import hpcsnp.cnn.model  # noqa: F401 - registers the custom layers for loading
        from hpcsnp.cnn.data import one_hot

        self.folds = list(folds)
        self.models, means, sds = [], [], []  # models: per fold, its model and those of its other seeds
        for i in self.folds:
            d = run.fold(dataset, i)
            paths = [d / MODEL_KERAS, *sorted(d.glob("seed_*/" + MODEL_KERAS))]
            self.models.append([_load_model(p, run, dataset, i) for p in paths])
            m = FoldMetrics.read(d / METRICS_JSON)
            means.append(m.target_mean)
            sds.append(m.target_sd)
        mean = tf.constant(np.asarray(means, np.float32)[:, None])
        sd = tf.constant(np.asarray(sds, np.float32)[:, None])
        models = self.models
        spec = (tf.TensorSpec((None, n_variants), tf.int8),)

        def each(x):  # [folds, batch]: each fold's prediction, the mean of its seeds' models
            return tf.stack([tf.add_n([m(x, training=False)[:, 0] for m in fold]) / len(fold)
                             for fold in models]) * sd + mean

        @tf.function(input_signature=spec, autograph=False)
        def predict(g):
            return each(one_hot(g))

        @tf.function(input_signature=spec, autograph=False)
        def explain(g):
            x = one_hot(g)
            with tf.GradientTape() as tape:
                tape.watch(x)
                z = each(x)
                total = tf.reduce_sum(tf.reduce_mean(z, axis=0))  # lines are independent
            s = tf.reduce_max(tf.abs(tape.gradient(total, x)), axis=-1)
            top = tf.math.top_k(s, k=min(EXPLAIN_TOP, n_variants))
            return z, top.values, top.indices

        self._predict, self._explain = predict, explain

    def predict(self, g: np.ndarray) -> np.ndarray:
        return self._predict(g).numpy().astype(np.float64)

    def explain(self, g: np.ndarray):
        z, v, i = self._explain(g)
        return z.numpy().astype(np.float64), v.numpy(), i.numpy()


def _load_model(path: Path, run: RunDir, dataset: str, fold: int):
    """A fold's saved model; a damaged one is an error naming it and the command that redoes the fold."""
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises several types for a damaged archive
        store = read_json(run.dataset_json(dataset)).get("store", "STORE")
        raise InputError(f"{path} cannot be loaded ({type(e).__name__}): the file is damaged; redo the fold with "
                         f"hpcsnp train {store} --fold {fold} --run {run} --name {dataset} --force") from None


def conformal_half_width(residuals: np.ndarray, level: float) -> float:
    """Half the width of the split-conformal interval at ``level`` from out-of-fold residuals:
    the ceil((n + 1) level)-th smallest |residual|, infinite when n is too small for it.

    >>> conformal_half_width(np.arange(1, 20.0), 0.9)  # n = 19: the 18th smallest
    18.0
    >>> conformal_half_width(np.arange(1, 5.0), 0.9)
    inf
    """
    r = np.sort(np.abs(np.asarray(residuals, np.float64)))
    k = int(np.ceil((len(r) + 1) * level))
    return float(r[k - 1]) if k <= len(r) else float("inf")


def out_of_fold_residuals(run: RunDir, ds: DatasetRecord, folds: list[int], ensemble: list | None) -> np.ndarray:
    """Phenotype minus the headline's out-of-fold prediction of every test line of ``folds``:
    the ensemble's (``ensemble``: ensemble_folds' rows) or, without it, the fold CNN's."""
    import pandas as pd

    if ensemble:
        frames = [p for _, _, p in ensemble if int(p["fold"].iloc[0]) in folds]
    else:
        frames = [pd.read_csv(run.fold(ds.dataset, i) / PREDICTIONS_CSV) for i in folds]
    t = pd.concat(frames)
    return (t["truth"] - t["prediction"]).to_numpy(np.float64)


def _averaged_weights(ensemble: list, baselines: list[str]) -> dict | None:
    """Weights of cnn + baselines for the headline: each fold's weights (chosen by
    ``reduce``'s rule, ensemble.ensemble_folds) averaged over the folds; None when the run has
    no baseline or no validation predictions."""
    rows = [w for _, w, _ in ensemble]
    if not rows:
        return None
    models = ["cnn", *baselines]
    w = np.mean([[r[f"w_{m}"] for m in models] for r in rows], axis=0)
    return {m: float(x) for m, x in zip(models, w)}


# --- the command ----------------------------------------------------------------------

@dataclass
class PredictResult:
    out: Path
    n_lines: int
    alignment: dict
    weights: dict | None
    seconds: float
    report_path: Path
    explain_path: Path | None
    table: object  # pandas DataFrame
    interval: dict


def report_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".alignment.json")


def explain_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".explain.csv")


def input_paths(genotypes, bfile) -> list[Path]:
    """The files (or store directory) predict reads the new lines from."""
    if bfile is not None:
        prefix = str(bfile)[:-4] if str(bfile).endswith(".bed") else str(bfile)
        return [Path(prefix + ext) for ext in (".bed", ".bim", ".fam")]
    return [Path(genotypes)] if genotypes is not None else []


def check_outputs(outputs: list[Path], run: RunDir, inputs: list[Path], *, force: bool) -> None:
    """Refuse, before any work, an output predict may not write: one that is an input or lies
    inside an input store or the run's data sets (never replaced, even with --force), that
    exists (without --force), or that cannot be written.  Then remove the temporary files a
    killed predict left for these outputs."""
    protected = [p.resolve() for p in inputs]
    owned = [run.dataset_dir(d.dataset).resolve() for d in run.datasets()] + [run.config_path.resolve(),
                                                                                run.logs.resolve()]
    for path in outputs:
        where = path.resolve()
        for p in protected:
            if where == p or where.is_relative_to(p):
                kind = "an input" if where == p else "inside the input"
                raise InputError(f"{path} would be written by predict but is {kind} "
                                 f"{p}; choose another -o")
        for p in owned:
            if where == p or where.is_relative_to(p):
                raise InputError(f"{path} is a file of the run {run} (written by train, cv or reduce); "
                                 "choose an -o outside RUN/<dataset>/")
        check_writable(path)
        if path.exists() and not force:
            raise InputError(f"{path} already exists; use --force to overwrite it")
    for path in outputs:
        for p in remove_stale_files(path):
            logger.info(f"removed {p}, left by a predict that was killed")


def predict_run(run_dir, genotypes=None, *, out, bfile=None, dataset=None, min_overlap=0.9, explain=False,
                fold=None, baseline=True, threads=None, progress=False, force=False, level=LEVEL,
                rank_by="high", solver="auto", pev=False) -> PredictResult:
    from tqdm import tqdm

    t0 = time.perf_counter()
    n_threads = cap_threads(threads)  # before TensorFlow or NumPy's BLAS start their pools

    run, out = RunDir(run_dir), Path(out)
    if not run.path.is_dir():
        raise InputError(f"{run}: no such run directory")
    if out.is_dir():
        raise InputError(f"-o {out} is a directory; give a file name such as predictions.csv")
    if not 0 < level < 1:
        raise InputError(f"--level {level}: an interval's coverage is between 0 and 1 (e.g. 0.9)")
    if rank_by not in RANK_BY:
        raise InputError(f"--rank-by {rank_by!r}: one of {', '.join(RANK_BY)}")
    ds = choose_dataset(run, dataset)
    outputs = [out, report_path_for(out), *([explain_path_for(out)] if explain else [])]
    tables = [Path(p) for p in (ds.pheno, ds.covar) if p]  # a trait's and the covariates' tables
    check_outputs(outputs, run, [*input_paths(genotypes, bfile), Path(ds.store), *tables], force=force)
    name = ds.dataset
    folds = _folds_to_use(run, ds, fold)
    store = ds.open_store()
    if ds.covar:
        logger.warning(f"{name}: new lines are predicted at the covariates' mean over the phenotyped lines (their own "
                       "covariates are not read); the interval was calibrated on lines predicted with their own, so "
                       "it is too narrow by as much as the covariates explain")
    if ds.store_id is not None and store.store_id != ds.store_id:
        raise InputError(f"{ds.store} was re-ingested after {run}/{name} was trained on it; "
                         "predict needs the store the run was trained on")
    train_meta = VariantMeta.of_store(store)
    cfg = run.config()
    source = open_new_lines(genotypes, bfile=bfile, train=train_meta, progress=progress)
    try:
        alignment = align(train_meta, source.meta, getattr(source, "unread_extra", 0))
        where = str(getattr(source, "path", genotypes or bfile))
        logger.info(f"alignment with {name}: {alignment.summary()}")
        check_overlap(alignment, min_overlap, where)
        baselines = sorted({r["model"] for r in baseline_rows(run.path, ds)}) if baseline and fold is None else []
        designs: dict = {}  # the RKHS fits' designs, shared
        effects = {m: refitted(run, ds, store, baseline_kind(m), designs, solver=solver) for m in baselines}
        pevs = _pev_columns(run, ds, store, effects, solver) if pev else {}
        ensemble = ensemble_folds(run.path, ds, baselines) if baselines else []
        weights = _averaged_weights(ensemble, baselines)
        residuals = out_of_fold_residuals(run, ds, folds, ensemble if weights else None)
        half = conformal_half_width(residuals, level)
        if baselines and weights is None:
            logger.warning(f"{name}: the run has no validation predictions to weigh the ensemble on; "
                           "the headline is the CNN mean")
        configure_tensorflow(n_threads)  # TensorFlow's first import: quiet, its pools capped
        from hpcsnp.cnn.steps import eval_batch_size
        batch = eval_batch_size(Config.from_dict(cfg) if cfg else Config(), store.n_variants)
        models = FoldModels(run, name, folds, store.n_variants)
        cols: dict = {c: [] for c in COLUMNS if c not in ("prediction", "lower", "upper", "rank")}
        cols.update({f"{m}_{what}": [] for m in pevs for what in PEV_COLUMNS})
        tmp_explain = None
        if explain:
            tmp_explain = tmp_name(explain_path_for(out))
            tmp_explain.write_text("sample_id,snp_rank,snp,chrom,pos,genotype,saliency\n")
        bar = tqdm(desc="predict", unit=" lines", disable=not progress, leave=False)
        for ids, codes in source.blocks():
            g = alignment.apply(codes)
            cols["sample_id"] += list(ids)
            cols["observed_fraction"].append((g >= 0).mean(axis=1))
            for col in BASELINE_MODELS:
                m = effects.get(col)
                cols[col].append(m.predict(g) if m else np.full(len(g), np.nan))
            for col, pev_of in pevs.items():
                for what, values in zip(PEV_COLUMNS, pev_of(g)):
                    cols[f"{col}_{what}"].append(values)
            for s in range(0, len(g), batch):
                gb = g[s:s + batch]
                if explain:
                    z, sal, idx = models.explain(gb)
                    _append_explanations(tmp_explain, ids[s:s + batch], gb, sal, idx, store)
                else:
                    z = models.predict(gb)
                cols["cnn_mean"].append(z.mean(axis=0))
                cols["cnn_sd"].append(z.std(axis=0, ddof=1) if len(z) > 1 else np.full(z.shape[1], np.nan))
            bar.update(len(ids))
        bar.close()
    except BaseException:
        if explain and tmp_explain is not None:
            tmp_explain.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    table = headline_table(cols, weights, half, rank_by)
    seconds = time.perf_counter() - t0
    report = {"run": str(run.path), "dataset": name, "store": ds.store, "input": where,
              "input_format": source.kind, "lines": len(table), "folds": folds,
              "alignment": alignment.report(), "min_overlap": min_overlap,
              "headline": ("ensemble, each fold's weights (chosen on the validation predictions of every line "
                           "outside it) averaged over the folds" if weights else "cnn_mean"), "weights": weights,
              "interval": {"level": level, "half_width": half, "out_of_fold_residuals": len(residuals),
                           "method": "split-conformal on the headline's out-of-fold residuals of the run's CV: "
                                     "prediction +- their ceil((n + 1) level)-th smallest absolute value",
                           "holds_for": "new lines drawn like the run's own lines"},
              "rank_by": rank_by, "seconds": round(seconds, 2),
              # --pev: each GBLUP column's genetic variance (REML, on all phenotyped lines) and delta
              "pev": {m: {"sg2": p.sg2, "delta": p.fit.delta} for m, p in pevs.items()} if pev else None}
    if getattr(source, "skipped", None):
        report["skipped_variants"] = source.skipped
    if getattr(source, "invalid_calls", None):
        report["invalid_calls_read_as_missing"] = source.invalid_calls
    rpath = _write_outputs(out, table, report, tmp_explain)
    return PredictResult(out, len(table), report["alignment"], weights, seconds, rpath,
                         explain_path_for(out) if explain else None, table, report["interval"])


def _folds_to_use(run: RunDir, ds: DatasetRecord, fold: int | None) -> list[int]:
    """``fold`` alone (finished), or every fold of the data set (all finished and readable,
    from this write of the store)."""
    name = ds.dataset
    if fold is None:
        check_complete(run.path, [ds])
        return list(range(1, ds.n_folds + 1))
    if not 1 <= fold <= ds.n_folds:
        raise InputError(f"--fold {fold}: {name} has folds 1..{ds.n_folds}")
    if not run.is_complete(name, fold):
        raise InputError(f"{name} fold {fold} is not finished: finish it with hpcsnp train {ds.store_args} "
                         f"--fold {fold} --run {run}")
    return [fold]


def _pev_columns(run, ds, store, effects: dict, solver: str) -> dict:
    """--pev: a PredictionErrorVariance per GBLUP refit on the exact path (the scalable path
    has no n x n kernel to take it from: said, and left out)."""
    from hpcsnp.linear.scalable import choose_solver

    out = {}
    for m, fit in effects.items():
        if m not in LINEAR_MODELS or fit is None:
            continue
        if choose_solver(store, solver)[0] == "scalable":
            logger.warning(f"{ds.dataset}: no PEV for {m}: it was refitted by the scalable solver, and the PEV "
                           "needs the exact path's n x n kernel")
            continue
        t0 = time.perf_counter()
        out[m] = prediction_error_variance(run, ds, store, baseline_kind(m), fit)
        logger.info(f"{ds.dataset}: {m} PEV set up in {time.perf_counter() - t0:.1f}s (sg2 {out[m].sg2:.4g})")
    return out


def headline_table(cols: dict, weights: dict | None, half: float, rank_by: str):
    """The output table from the per-model columns: the headline (the ensemble with
    ``weights``, else the CNN mean), its interval +- ``half`` and its rank."""
    import pandas as pd

    table = pd.DataFrame({c: (v if c == "sample_id" else np.concatenate(v) if v else np.zeros(0))
                          for c, v in cols.items()})
    head = table["cnn_mean"].to_numpy()
    if weights:
        head = sum(w * table[m if m != "cnn" else "cnn_mean"].to_numpy() for m, w in weights.items())
    table.insert(1, "prediction", head)
    table.insert(2, "lower", head - half)
    table.insert(3, "upper", head + half)
    table.insert(4, "rank", table["prediction"].rank(ascending=rank_by == "low", method="first").astype(int))
    extra = [c for c in table if c not in COLUMNS]  # --pev: after the columns of the baselines
    at = COLUMNS.index("observed_fraction")
    return table[COLUMNS[:at] + extra + COLUMNS[at:]]


def _write_outputs(out: Path, table, report: dict, tmp_explain: Path | None) -> Path:
    """The predictions, the alignment report and the explanations, each replaced whole;
    nothing of them left behind when one fails.  Returns the report's path."""
    tmp = tmp_name(out)
    rpath = report_path_for(out)
    try:
        table.to_csv(tmp, index=False, float_format="%.6g")
        atomic_write_text(rpath, json.dumps(report, indent=2) + "\n")
        if tmp_explain is not None:
            os.replace(tmp_explain, explain_path_for(out))
        os.replace(tmp, out)
    except BaseException:
        for t in (tmp, tmp_name(rpath), tmp_explain):
            if t is not None:
                t.unlink(missing_ok=True)
        raise
    return rpath


def _append_explanations(path: Path, ids, g, sal, idx, store) -> None:
    import csv

    with open(path, "a", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        for r, sid in enumerate(ids):
            for k, (j, s) in enumerate(zip(idx[r], sal[r]), start=1):
                w.writerow([sid, k, store.variant_id[j], store.contig[j], store.position[j], int(g[r, j]),
                            f"{s:.6g}"])
