"""One cross-validation fold: fit, early stop, refit, save model, predictions, metrics, shard.

This module imports TensorFlow only when a fold starts training (through ``steps`` and
``model``), after the fold has been checked and the thread pools capped, so a refused
fold is one line on stderr and the caps apply to TensorFlow's pools.

``train_fold`` trains test fold i of one store in this process only and
writes ``RUN/<dataset>/fold_<i>/`` atomically: everything is written into
``fold_<i>.partial/`` and renamed when complete, so a directory named
``fold_<i>`` is always a finished fold.  At the end of every epoch the
model, optimiser and early-stopping state are checkpointed into the partial
directory; a rerun of the same fold resumes from there.  A finished fold is
skipped unless ``force``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hpcsnp.atomic import atomic_replace_dir
from hpcsnp.cnn.checkpoint import (
    Checkpointer,
    _savez_atomic,
    check_resumable,
    load_variables,
    save_variables,
    signals_held,
)
from hpcsnp.cnn.data import RowSource, should_cache
from hpcsnp.cnn.loop import fit_epochs, train_epoch
from hpcsnp.config import Config
from hpcsnp.errors import FoldFailedError
from hpcsnp.folds import check_fold_usable, fold_split
from hpcsnp.genotypes import mean_dosage
from hpcsnp.metrics import all_finite, regression_metrics
from hpcsnp.resources import configure_tensorflow, granted_cpus, peak_rss_mb, provenance, rss_mb, tensorflow_device
from hpcsnp.rundir import (
    MEMBER_FILE,
    METRICS_JSON,
    MODEL_KERAS,
    PREDICTIONS_CSV,
    REFIT_DIR,
    SEED_PREDICTIONS_CSV,
    STOPPED_FILE,
    STOPPED_WEIGHTS,
    VAL_PREDICTIONS_CSV,
    RunDir,
    check_same_store,
    dataset_name,
    read_json,
    shard_file,
)
from hpcsnp.store import open_store

logger = logging.getLogger(__name__)


@dataclass
class FoldResult:
    dataset: str
    fold: int
    path: Path
    metrics: dict
    skipped: bool = False


def train_fold(store_path, fold: int, run_dir, cfg: Config | None = None, *, dataset: str | None = None,
               force: bool = False, threads: int | None = None, trait: str | None = None,
               pheno=None, covar=None, covar_names=()) -> FoldResult:
    """Train test fold ``fold`` of a store into ``run_dir``.  ``cfg`` None: the run's settings
    (RUN/config.json), else the defaults, which then become the run's; a ``cfg`` that differs
    from the run's settings is refused.  ``trait``/``pheno``: a trait of a phenotype table
    in place of the store's phenotype; ``covar``/``covar_names``: covariates (hpcsnp/traits.py)."""
    store = open_store(store_path, trait=trait, pheno=pheno, covar=covar, covar_names=covar_names)
    dataset = dataset_name(store, dataset)
    split = fold_split(store.fold, store.n_folds, fold)
    check_fold_usable(store, split)
    run = RunDir(run_dir)
    cfg = run.adopt_config(cfg or Config(), explicit=cfg is not None)
    final, partial = run.fold(dataset, fold), run.partial(dataset, fold)
    if run.is_complete(dataset, fold) and not force:
        return _skipped(final, dataset, fold, store)
    run.write_dataset_info(dataset, store, force=force)
    with run.lock(dataset, fold):
        if run.is_complete(dataset, fold) and not force:  # finished by another process just before we locked
            return _skipped(final, dataset, fold, store)
        if force:
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        return _train(store, split, dataset, final, partial, cfg, threads)


def _skipped(final: Path, dataset: str, fold: int, store) -> FoldResult:
    check_same_store(final / METRICS_JSON, store, f"{dataset} fold {fold}")
    metrics = read_json(final / METRICS_JSON)
    logger.info(f"[{dataset} fold {fold}] already finished (pcc {metrics['pcc']:.4f}); skipped (--force redoes it)")
    return FoldResult(dataset, fold, final, metrics, skipped=True)


def _train(store, split, dataset, final, partial, cfg, threads) -> FoldResult:
    """One fold, as a page of calls: train ``cfg.models_per_fold`` models that differ only in
    their seed, average their predictions and saliency, write the outputs,
    rename into place."""
    fold = split.test_fold
    say = FoldLog(dataset, fold)
    n_threads = granted_cpus(threads)
    configure_tensorflow(n_threads)
    t_start = time.perf_counter()
    n_models = cfg.models_per_fold(len(split.train))
    # what the fold's models share: the last model's CompiledSteps, restarted for the next
    # ("steps"); the store's every line, when cached, for their ``marginal`` ("everyone")
    members, shared = [], {} if n_models > 1 else None
    rotate = cfg.rotates(n_models)
    refit = cfg.refits(n_models)  # rotated models are not refitted; the fold records the run's settings
    for k in range(n_models):
        where = partial if k == 0 else partial / f"seed_{k}"
        member_cfg = cfg.replace(refit=refit, seed=cfg.seed + k)
        # rotated: model k early-stops on the k-th fold after the fold's validation fold
        member_split = fold_split(store.fold, store.n_folds, split.test_fold, shift=k) if rotate else split
        members.append(_train_member(store, member_split, where, member_cfg, n_threads,
                                     say if n_models == 1 else FoldLog(dataset, fold, f"seed {member_cfg.seed}"),
                                     lead=members[0] if k and cfg.shares_schedule() else None, shared=shared))
    if shared:
        shared.clear()  # the last model's graphs and variables: not held while the fold's outputs are written
    test_pred = np.mean([m.test_pred for m in members], axis=0)
    test_rows, val_rows = members[0].test_rows, members[0].val_rows
    # the models with predictions of the fold's validation fold that never trained on it
    early_stopped = [m for m in members if len(m.val_rows) and np.array_equal(m.val_rows, val_rows)]
    metrics = regression_metrics(store.phenotype[test_rows], test_pred)
    if not all_finite(metrics):
        why = "the predictions are constant" if np.ptp(test_pred) == 0 else "the predictions are not finite"
        raise FoldFailedError(f"{dataset} fold {fold}: the test metrics cannot be computed ({why}: pcc "
                              f"{metrics['pcc']}, mse {metrics['mse']}); nothing was marked finished "
                              f"(--force trains it afresh)")
    out = FoldOutputs(partial, store, split, dataset)
    out.predictions(PREDICTIONS_CSV, test_rows, test_pred, fold)
    # of the kept weights: what `reduce` weighs the ensemble on
    out.predictions(VAL_PREDICTIONS_CSV, val_rows, np.mean([m.val_pred for m in early_stopped], axis=0),
                    split.val_fold)
    sal_n = members[0].sal_n
    for method in cfg.attribution_methods():
        out.attribution_shard(method, np.mean([m.attr[method] for m in members], axis=0), sal_n, cfg)
    first = members[0]
    passes = Passes(sal_n, sum(m.attr_seconds["saliency"] for m in members), len(test_rows),
                    sum(m.predict_seconds for m in members))
    metrics.update(fold_record(dataset, split, store, cfg, first, n_threads, passes, t_start))
    metrics["attribution_seconds"] = {k: sum(m.attr_seconds[k] for m in members) for k in first.attr_seconds}
    metrics["models"] = n_models
    if n_models > 1:
        import pandas as pd

        pd.DataFrame({"sample_id": store.sample_id[test_rows], "truth": store.phenotype[test_rows],
                      **{f"seed_{m.seed}": m.test_pred for m in members}}).to_csv(partial / SEED_PREDICTIONS_CSV,
                                                                                  index=False)
        metrics["seconds"] = sum(training_seconds(m.state) for m in members)
        truth = store.phenotype[test_rows]
        metrics["seed_runs"] = [{"seed": m.seed, "pcc": regression_metrics(truth, m.test_pred)["pcc"],
                                 "epochs": m.state["epoch"], "best_epoch": m.state["best_epoch"],
                                 "seconds": training_seconds(m.state),
                                 # of which the refit (its epochs): what a profile of the fold splits
                                 "refit_seconds": (m.state.get("refit") or {}).get("seconds", 0.0),
                                 "refit_epochs": (m.state.get("refit") or {}).get("epochs", 0),
                                 # a later model of a shared schedule: not early-stopped, the lead's epochs
                                 **({"schedule_of": m.state["schedule_of"]} if "schedule_of" in m.state else {})}
                                for m in members]
    out.metrics(metrics)
    for m in members:
        (m.dir / MEMBER_FILE).unlink(missing_ok=True)
    atomic_replace_dir(partial, final)
    say(f"test PCC {metrics['pcc']:.4f}  MSE {metrics['mse']:.4g}  MAE {metrics['mae']:.4g}  {first.state['epoch']} "
        f"epochs (best {first.state['best_epoch']}{', refitted' if refit else ''})  "
        f"{metrics['seconds']:.0f}s train, "
        f"{metrics['saliency_seconds']:.1f}s saliency" + (f", {n_models} models" if n_models > 1 else ""))
    return FoldResult(dataset, fold, final, metrics)




@dataclass
class Member:
    """One trained model of a fold and what it produced."""

    dir: Path
    seed: int
    scale: "TargetScale"
    state: dict
    fit: dict
    test_pred: np.ndarray
    test_rows: np.ndarray
    val_pred: np.ndarray
    val_rows: np.ndarray
    attr: dict  # method -> per-SNP sum over the test samples
    sal_n: int
    predict_seconds: float
    attr_seconds: dict  # method -> seconds


def _train_member(store, split, where: Path, cfg, n_threads: int, say, lead: Member | None = None,
                  shared: dict | None = None) -> Member:

    """Fit one model of the fold in ``where`` (checkpointed there): early-stopped on the
    validation fold, whose predictions it makes, then (cfg.refit) refitted on training +
    validation; predict the test fold with the final model, compute its saliency, save
    model.keras.  ``lead``: the fold's first model, whose schedule (epochs kept, learning
    rates) this one's refit replays instead of early-stopping itself (cfg.shares_schedule()):
    it then has no validation predictions.  A model finished before an interruption of the
    fold (its MEMBER_FILE is there) is read back, not trained again; an interrupted refit
    resumes without the early-stopped training being redone.  ``shared``: holds the fold's
    last CompiledSteps (under "steps"), which an early-stopped model without refit restarts
    (CompiledSteps.restart) instead of building and tracing its own, and leaves there; and
    the store's every line ("everyone", cached where it fits) for the ``marginal`` attribution."""
    import keras

    from hpcsnp.cnn.steps import CompiledSteps  # TensorFlow: after the checks and thread caps

    fold = split.test_fold
    where.mkdir(parents=True, exist_ok=True)
    scale = TargetScale.fit(store.phenotype, split.train, cfg, say, store.covariates)
    done = where / MEMBER_FILE
    if done.exists() and (where / MODEL_KERAS).exists():
        with np.load(done, allow_pickle=False) as z:
            state = json.loads(str(z["state"]))
            check_resumable(state, cfg, store, where)
            attr = {k.removeprefix("attr_"): z[k] for k in z.files if k.startswith("attr_")}
            if "scale" in z.files:  # its predictions are saved: mean and sd are for metrics.json
                scale = TargetScale(*map(float, z["scale"][:2]), coef=tuple(map(float, z["scale"][2:])))
            return Member(where, cfg.seed, scale, state, json.loads(str(z["fit"])), z["test_pred"], z["test_rows"],
                          z["val_pred"], z["val_rows"], attr, int(z["sal_n"]), float(z["predict_seconds"]),
                          json.loads(str(z["attr_seconds"])))
    stopped = where / STOPPED_FILE
    if lead is not None:
        state = {**new_state(cfg, store), "schedule_of": lead.seed}
        fit, val_pred, val_rows = {}, np.empty(0, np.float32), np.empty(0, np.int64)
    elif cfg.refit and stopped.exists():
        with np.load(stopped, allow_pickle=False) as z:
            state, fit = json.loads(str(z["state"])), json.loads(str(z["fit"]))
            check_resumable(state, cfg, store, where)
            val_pred, val_rows = z["val_pred"], z["val_rows"]
    else:
        keras.utils.set_random_seed(cfg.seed * 1009 + fold)
        sources = FoldSources.build(store, split, scale, cfg)
        fill = training_fill(sources.train, cfg)
        steps = shared.pop("steps", None) if shared is not None and not cfg.refit else None
        if steps is None or not steps.restart(cfg, scale, fill):
            steps = CompiledSteps.build(store.n_variants, cfg, scale, n_threads, say, fill)
        ckpt = Checkpointer(where, steps.run_variables, steps.model.variables)
        state = ckpt.resume(new_state(cfg, store), cfg, store, steps.optimizer)
        if state["epoch"]:
            say(f"resuming after epoch {state['epoch']} "
                f"(best val MAE {state['best_mae']:.4g} at epoch {state['best_epoch']})")
        say(f"test fold {fold} ({len(split.test)}), validation fold {split.val_fold} ({len(split.val)}), training "
            f"{len(split.train)} samples x {store.n_variants} SNPs; "
            f"{'cached int8' if sources.cached else 'streamed from store'}, {n_threads} thread(s)")
        fit = fit_epochs(steps, sources, state, ckpt, cfg, store.phenotype, n_threads, say)
        if cfg.restore_best and state["best_epoch"]:
            ckpt.restore_best()
        else:
            steps.use_averages()
        val_pred, val_rows = steps.predict(sources.val)  # of a model that never trained on the validation fold
        if cfg.refit:
            with signals_held():  # the early-stopped weights first: a warm refit starts from them
                if cfg.refit_start == "warm":
                    save_variables(where / STOPPED_WEIGHTS, steps.model.variables)
                _savez_atomic(stopped, state=json.dumps(state), fit=json.dumps(fit), val_pred=val_pred,
                              val_rows=val_rows)
                ckpt.clear()
    if cfg.refit:
        steps, sources, scale, state["refit"] = _refit(store, split, where, cfg, lead.state if lead else state,
                                                       n_threads, say)
    t_pred = time.perf_counter()
    test_pred, test_rows = steps.predict(sources.test)
    predict_seconds = time.perf_counter() - t_pred
    attr, sal_n, attr_seconds = steps.attributions(sources.test)
    if "marginal" in cfg.attribution_methods():
        t_marginal = time.perf_counter()
        # over every line of the store; times the test count, which reduce divides the shards' sums by
        attr["marginal"] = steps.marginal(everyone(store, cfg, shared)) * sal_n
        attr_seconds["marginal"] = time.perf_counter() - t_marginal
    steps.model.save(where / MODEL_KERAS)
    if shared is not None and not cfg.refit:
        shared["steps"] = steps
    member = Member(where, cfg.seed, scale, state, fit, test_pred, test_rows, val_pred, val_rows, attr, sal_n,
                    predict_seconds, attr_seconds)
    with signals_held():
        _savez_atomic(done, state=json.dumps(state), fit=json.dumps(fit), test_pred=test_pred, test_rows=test_rows,
                      val_pred=val_pred, val_rows=val_rows, sal_n=sal_n, predict_seconds=predict_seconds,
                      attr_seconds=json.dumps(attr_seconds), scale=np.array([scale.mean, scale.sd, *scale.coef]),
                      **{f"attr_{k}": v for k, v in attr.items()})
        if cfg.refit:
            shutil.rmtree(where / REFIT_DIR, ignore_errors=True)
            stopped.unlink(missing_ok=True)
            (where / STOPPED_WEIGHTS).unlink(missing_ok=True)
        else:
            ckpt.clear()
    return member


class Refitted(NamedTuple):
    """A refit's compiled steps, its sources and target scale, and its record for metrics.json."""

    steps: object
    sources: "FoldSources"
    scale: "TargetScale"
    record: dict


def _refit(store, split, where: Path, cfg, state: dict, n_threads: int, say) -> Refitted:

    """Train on the training + validation folds, checkpointed every epoch in REFIT_DIR;
    ``state``: the early-stopped run whose schedule it follows (this model's, or the lead's).
    ``cfg.refit_start`` "warm": from the early-stopped weights (saved in STOPPED_WEIGHTS) with
    Adam's moments at zero, ``cfg.refit_epochs`` epochs at ``cfg.refit_lr_factor`` x the
    learning rate of the best epoch, the target scaled as the early-stopped model's was;
    "fresh": from the same initialisation, for the epochs the early-stopped model was kept at,
    each with the learning rate it had then, the target scaled with those lines' mean and sd.
    """
    import keras

    from hpcsnp.cnn.steps import CompiledSteps

    kept = state["best_epoch"] if cfg.restore_best and state["best_epoch"] else state["epoch"]
    # the learning rate of epoch e: the starting one, then as the plateau rule left it after epoch e - 1
    lrs = [cfg.learning_rate] + [h["lr"] for h in state["history"]][:kept - 1]
    warm = cfg.refit_start == "warm"
    if warm:
        epochs, lrs = cfg.refit_epochs, [cfg.refit_lr_factor * lrs[-1]] * cfg.refit_epochs
    else:
        epochs = kept
    rows = refit_rows(split)
    scale = TargetScale.fit(store.phenotype, split.train if warm else rows, cfg, say, store.covariates)
    keras.utils.set_random_seed(cfg.seed * 1009 + split.test_fold)
    sources = FoldSources.build(store, split, scale, cfg, refit=True)
    # warm: the training fill (a model weight) comes with the early-stopped weights
    steps = CompiledSteps.build(store.n_variants, cfg, scale, n_threads, say,
                                None if warm else training_fill(sources.train, cfg))
    if warm:
        load_variables(where / STOPPED_WEIGHTS, steps.model.variables)
        steps.start_averages()  # from the early-stopped weights, not the initialisation
    (where / REFIT_DIR).mkdir(exist_ok=True)
    ckpt = Checkpointer(where / REFIT_DIR, steps.run_variables, steps.model.variables)
    rstate = ckpt.resume({**new_state(cfg, store), "epochs": epochs}, cfg, store, steps.optimizer)
    say(f"refit on training + validation ({len(rows)} samples) for {epochs} epochs"
        + (f" from the early-stopped weights (epoch {kept})" if warm else "")
        + (f", the schedule seed {state['config']['seed']}'s validation fold chose"
           if state["config"]["seed"] != cfg.seed else "")
        + (f", resuming after epoch {rstate['epoch']}" if rstate["epoch"] else ""))
    while rstate["epoch"] < epochs:
        t0 = time.perf_counter()
        epoch = rstate["epoch"] + 1
        rstate["lr"] = lrs[epoch - 1]
        steps.optimizer.learning_rate.assign(rstate["lr"])
        losses = train_epoch(steps, sources.train, rstate, cfg, (kept if warm else 0) + epoch, n_threads)
        rstate["epoch"] = epoch
        rstate["train_seconds"] += time.perf_counter() - t0
        rstate["history"].append({"epoch": epoch, "loss": float(np.mean(losses)), "lr": rstate["lr"]})
        ckpt.save_epoch(rstate, epoch)
        say(f"refit epoch {epoch:4d}/{epochs}  loss {np.mean(losses):.4f}  lr {rstate['lr']:.3g}  "
            f"{time.perf_counter() - t0:.1f}s  rss {rss_mb('VmRSS'):.0f} MB")
    steps.use_averages()  # the model kept, when averaging
    record = {"n_train": len(rows), "start": cfg.refit_start, "epochs": epochs, "seconds": rstate["train_seconds"],
              "samples": rstate.get("samples", 0), "history": rstate["history"]}
    return Refitted(steps, sources, scale, record)


def training_fill(src, cfg) -> np.ndarray | None:
    """The per-SNP dosage missing calls read as (``cfg.missing_dosage`` "mean"): the mean
    centred dosage of the lines ``src`` trains on, which the model saves; None otherwise."""

    from hpcsnp.cnn.model import fills_missing

    if not fills_missing(cfg):
        return None
    if src.cached is not None:
        return mean_dosage([src.cached], src.store.n_variants, centred=True)
    return mean_dosage((g for g, _, _ in src.batches(cfg.eval_batch_size, shuffle=False)), src.store.n_variants,
                       centred=True)


def refit_rows(split) -> np.ndarray:
    """The refit's training lines: the training and validation folds, in store order."""
    return np.sort(np.concatenate([split.train, split.val]))


def new_state(cfg, store) -> dict:
    """A training's checkpointed state before its first epoch."""
    return {"epoch": 0, "best_mae": None, "best_epoch": 0, "wait": 0, "history": [], "train_seconds": 0.0,
            "lr": cfg.learning_rate, "lr_wait": 0, "config": cfg.to_dict(), "store_id": store.store_id}


class FoldLog:
    """Progress of one fold on the module's logger, each line prefixed [dataset fold i]
    (and the model's seed when a fold trains several)."""

    def __init__(self, dataset: str, fold: int, member: str = ""):
        self.prefix = f"[{dataset} fold {fold}{' ' + member if member else ''}]"

    def __call__(self, message: str) -> None:
        logger.info(f"{self.prefix} {message}")

    def warning(self, message: str) -> None:
        logger.warning(f"{self.prefix} {message}")


@dataclass(frozen=True)
class TargetScale:
    """The target the network fits: the phenotype standardised with the training folds'
    mean and sd (in float64: float32 sums of squares overflow from |y| ~ 1e19), or raw.
    With covariates, their effects are fitted by least squares on the training lines alone
    and taken out first (``effects``: per store line, 0 at the training lines' mean
    covariates), and added back to each line's prediction: no test line's phenotype or
    covariates inform the fit."""

    mean: float
    sd: float
    effects: np.ndarray | None = None
    coef: tuple = ()  # the covariates' effects, per column (for metrics.json)

    @classmethod
    def fit(cls, y, train_rows, cfg, say, covariates=None) -> "TargetScale":
        effects, coef = None, ()
        if covariates is not None:
            from hpcsnp.linear.baseline import fixed_design

            C = np.asarray(covariates, np.float64)
            centre = C[train_rows].mean(axis=0)
            b = np.linalg.lstsq(fixed_design(C[train_rows], centre), y[train_rows].astype(np.float64), rcond=None)[0]
            effects, coef = (C - centre) @ b[1:], tuple(map(float, b[1:]))
            y = y.astype(np.float64) - effects
        if cfg.standardize:
            y64 = y[train_rows].astype(np.float64)
            sd = float(y64.std())
            return cls(float(y64.mean()), sd if sd > 0 else 1.0, effects, coef)
        bound = 1.0 / np.sqrt(cfg.alpha)
        if np.abs(y[train_rows]).max() >= bound:
            say.warning(f"|phenotype| reaches {np.abs(y[train_rows]).max():.3g}, beyond the ISRU bound {bound:.3g}; "
                        "predictions will saturate (drop --no-standardize)")
        return cls(0.0, 1.0, effects, coef)

    def forward(self, y) -> np.ndarray:
        """The target of every store line (``y``: the store's phenotype)."""
        y = np.asarray(y, dtype=np.float64)
        if self.effects is not None:
            y = y - self.effects
        return ((y - self.mean) / self.sd).astype(np.float32)

    def back(self, z, rows=None) -> np.ndarray:
        """Phenotype units: of the store lines ``rows`` with their covariates' effects, or (no
        rows) at the training lines' mean covariates."""
        out = z * self.sd + self.mean
        return out if self.effects is None or rows is None else out + self.effects[rows]


def everyone(store, cfg, shared: dict | None = None) -> RowSource:
    """Every line of the store (for the ``marginal`` attribution).  With ``shared`` (a fold of
    several models) cached, and kept there for the next model, which reads it from memory,
    where it and the fold's own cached lines fit ``cache_limit_mb`` together (twice the
    store's int8 genotypes); otherwise streamed (the read overlaps the predictions)."""
    if shared is not None and "everyone" in shared:
        return shared["everyone"]
    n = store.n_samples
    cache = shared is not None and cfg.cache != "never" and 2 * n * store.n_variants <= cfg.cache_limit_mb << 20
    src = RowSource(store, np.arange(n), np.zeros(n, np.float32), cache=cache, window_chunks=cfg.window_chunks)
    if cache:
        shared["everyone"] = src
    return src


@dataclass
class FoldSources:
    """Row sources of the fold's training, validation and test sets (cached int8 or streamed)."""

    train: RowSource
    val: RowSource | None  # None for the refit, which trains on it
    test: RowSource
    cached: bool

    @classmethod
    def build(cls, store, split, scale: TargetScale, cfg, *, refit: bool = False) -> "FoldSources":
        """The training folds, validation and test; ``refit``: training + validation folds
        as one training source, and no validation source (a cached one would be read for
        nothing)."""
        z = scale.forward(store.phenotype)
        cache = should_cache(cfg, len(split.train) + len(split.val) + len(split.test), store.n_variants)

        def source(rows):
            return RowSource(store, rows, z[rows], cache=cache, window_chunks=cfg.window_chunks)
        if refit:
            return cls(source(refit_rows(split)), None, source(split.test), bool(cache))
        return cls(source(split.train), source(split.val), source(split.test), bool(cache))


class FoldOutputs:
    """Writes a fold's result files into its partial directory."""

    def __init__(self, partial: Path, store, split, dataset: str):
        self.dir, self.store, self.split, self.dataset = partial, store, split, dataset

    def predictions(self, name: str, rows, pred, fold: int) -> None:
        import pandas as pd

        pd.DataFrame({"sample_id": self.store.sample_id[rows], "fold": fold, "truth": self.store.phenotype[rows],
                      "prediction": pred}).to_csv(self.dir / name, index=False)

    QUANTITY = {"marginal": "n_test x the covariance over every line of the store between the fold's prediction "
                            "(phenotype units) and SNP i's called dosage, over the dosage's sd (signed)",
                "saliency": "sum over test samples of max_c |d f / d x[i, c]|",
                "smoothgrad": "sum over test samples of max_c |mean over noisy copies of d f / d x[i, c]|",
                "ig": "sum over test samples of |integrated gradients of SNP i| (all-missing baseline)"}

    def attribution_shard(self, method: str, total, n: int, cfg) -> None:
        import zarr


        n_var = len(total)
        shard = zarr.create_array(str(self.dir / shard_file(method)), shape=(n_var,), dtype="float64",
                                  chunks=(n_var,), dimension_names=("variants",), overwrite=True)
        shard[:] = total
        shard.attrs.update({"n_samples": n, "dataset": self.dataset, "fold": self.split.test_fold,
                            "method": method, "quantity": self.QUANTITY[method],
                            "scale": "standardised phenotype" if cfg.standardize and method != "marginal"
                            else "phenotype"})

    def metrics(self, metrics: dict) -> None:
        (self.dir / METRICS_JSON).write_text(json.dumps(metrics, indent=2) + "\n")


@dataclass(frozen=True)
class Passes:
    """A fold's saliency and prediction passes over its test lines (every model together)."""

    saliency_n: int  # test lines explained
    saliency_seconds: float
    predicted_n: int  # test lines predicted
    predict_seconds: float


def fold_record(dataset: str, split, store, cfg, first: Member, n_threads: int, passes: Passes,
                t_start: float) -> dict:
    """Everything metrics.json records beside the accuracy: the fold, its training history
    (of its first model), throughput, the settings, the store it came from and where and with
    what it ran."""
    import tensorflow as tf

    state, scale, fit = first.state, first.scale, first.fit
    sal_n, sal_seconds = passes.saliency_n, passes.saliency_seconds

    record = {
        "dataset": dataset, "fold": split.test_fold, "val_fold": split.val_fold,
        "epochs": state["epoch"], "best_epoch": state["best_epoch"], "best_val_mae": state["best_mae"],
        "seconds": training_seconds(state), "saliency_seconds": sal_seconds,
        # wall seconds of each epoch (its steps and its validation pass): what the preflight measures
        "epoch_seconds": state.get("epoch_seconds", []),
        "total_seconds": time.perf_counter() - t_start,
        "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
        # the model kept: refitted on training + validation (its epochs, seconds, lines), or None
        "refit": state.get("refit"),
        "saliency_n": sal_n, "cached": should_cache(cfg, len(split.train) + len(split.val) + len(split.test),
                                                    store.n_variants),
        "threads": n_threads,
        "device": tensorflow_device(),  # CPU, or the GPU TensorFlow placed the models on
        "bf16": cfg.bf16(),  # the training step computed in bfloat16 (bf16_step, "auto" resolved here)
        **_throughput(state, passes, store.n_variants, cfg),
        "train_cpu_utilisation": fit["cpu_utilisation"],
        "patience_epochs": fit["patience_epochs"], "lr_patience_epochs": fit["lr_patience_epochs"],
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "thread_pools": {"tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                         "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                         **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                           "OPENBLAS_NUM_THREADS")}},
        "target_mean": scale.mean, "target_sd": scale.sd, "seed": cfg.seed,
        **({"covariates": store.covariate_names, "covariate_effects": list(scale.coef)}
           if store.covariates is not None else {}),
        "store": str(store.path.resolve()), "store_id": store.store_id,
        "store_sha256": store.attrs.get("source", {}).get("sha256"),
        "config": cfg.to_dict(), "history": state["history"], **provenance(),
    }
    rss = peak_rss_mb()
    if rss:
        record["peak_rss_mb"] = rss
    return record


def training_seconds(state: dict) -> float:
    """Seconds of training epochs: the early-stopped run's and its refit's."""
    return state["train_seconds"] + (state.get("refit") or {}).get("seconds", 0.0)


def _throughput(state, passes: Passes, n_var: int, cfg) -> dict:
    """Samples/s and achieved GFLOP/s (model FLOPs, see model.flops_per_sample) of the
    training epochs (validation passes included in their time), saliency and prediction."""

    from hpcsnp.cnn.model import flops_per_sample

    fl = flops_per_sample(n_var, cfg)
    sal_n, sal_seconds = passes.saliency_n, passes.saliency_seconds
    samples = state.get("samples", 0)
    train_s = max(state["train_seconds"], 1e-9)
    return {"train_samples": samples, "train_samples_per_s": samples / train_s,
            "mflop_per_sample": {k: fl[k] / 1e6 for k in ("forward", "train_step", "train_step_fused", "saliency")},
            # GFLOP/s of the operations run, and the published model's count per sample x samples/s
            "train_gflops": samples * fl["train_step_fused" if cfg.fuse_convolutions else "train_step"]
            / train_s / 1e9,
            "train_gflops_model_equivalent": samples * fl["train_step"] / train_s / 1e9,
            "saliency_samples_per_s": sal_n / max(sal_seconds, 1e-9),
            "saliency_gflops": sal_n * fl["saliency"] / max(sal_seconds, 1e-9) / 1e9,
            "predict_samples_per_s": passes.predicted_n / max(passes.predict_seconds, 1e-9)}

