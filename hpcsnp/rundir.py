"""The run directory: where each data set's folds live, and the checks that keep a run
consistent (one set of settings, one write of each store, names that stay inside it).

Layout::

    RUN/config.json                    the run's settings (cv writes it; train writes it if absent)
    RUN/<dataset>/dataset.json         the store a data set comes from, with its store id
    RUN/<dataset>/variants.csv         its SNP names and positions
    RUN/<dataset>/fold_<i>/            a finished CNN fold (fold_<i>.partial while training):
                                       model.keras, predictions.csv, val_predictions.csv,
                                       metrics.json, <attribution>.zarr; checkpoints while it trains
    RUN/<dataset>/baseline_<enc>/fold_<i>/
    RUN/logs/<dataset>_fold<i>[.baseline].log
    RUN/*.csv, *.png                   written by reduce only

``RunDir`` knows this layout; nothing else builds these paths.  This module
must not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from hpcsnp.atomic import atomic_write_text
from hpcsnp.config import Config
from hpcsnp.errors import FoldBusyError, InputError
from hpcsnp.models import CNN, baseline_kind

logger = logging.getLogger(__name__)

# the files inside a fold directory (CNN: fold_<i>/, baseline: baseline_<enc>/fold_<i>/); every
# stage names them through these
METRICS_JSON = "metrics.json"  # a finished fold's metrics and provenance: written last
PREDICTIONS_CSV = "predictions.csv"  # sample_id, fold, truth, prediction on the test fold
VAL_PREDICTIONS_CSV = "val_predictions.csv"  # the same on the validation fold (the ensemble's weights)
MODEL_KERAS = "model.keras"  # a CNN fold's model (seed_<s>/model.keras for the others of the fold)
SEED_PREDICTIONS_CSV = "seed_predictions.csv"  # a CNN fold's test predictions of each of its models
GWAS_TSV = "gwas.tsv"  # RUN/<dataset>/gwas.tsv, or -o DIR/gwas.tsv: PLINK 2 .glm.linear columns
LEGACY_GWAS_CSV = "gwas.csv"  # the same table before it took PLINK 2's columns (still read)
FOLD_FILES = (MODEL_KERAS, PREDICTIONS_CSV, METRICS_JSON, "saliency.zarr")
# the files of a CNN fold while it trains (fold_<i>.partial/, and seed_<s>/ inside it for its
# other models): the checkpoint written every epoch, and what a finished model keeps
STATE_JSON = "state.json"  # the loop's state (epoch, best epoch, learning rate, history)
# model and optimiser variables at the end of epoch N; state.json names the one it describes
# (checkpoints written before the epoch was in the name: last.npz)
LAST_CHECKPOINT = "last-{epoch}.npz"
LEGACY_LAST_CHECKPOINT = "last.npz"
BEST_CHECKPOINT = "best.npz"  # the model's variables at its best validation epoch
MEMBER_FILE = "member.npz"  # a finished model's predictions, kept until the fold is complete
STOPPED_FILE = "early_stopped.npz"  # the early-stopped model's record and validation predictions, until refitted
STOPPED_WEIGHTS = "early_stopped_weights.npz"  # the early-stopped model's weights, until refitted
REFIT_DIR = "refit"  # the refit's checkpoints
CONFIG_JSON = "config.json"
# settings that change how fast a fold runs, not what it computes
EXECUTION_ONLY = frozenset({"eval_batch_size", "eval_activation_mb"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def shard_file(method: str) -> str:
    """The file of an attribution's shard in a fold directory: saliency.zarr, smoothgrad.zarr, ig.zarr."""
    return f"{method}.zarr"


def check_dataset_name(name: str, *, given: bool = True) -> str:
    """A data-set name is one plain path component: letters, digits, '.', '_', '-', not
    starting with '.' or '-' (so it can never leave the run directory).

    >>> check_dataset_name("height_imp")
    'height_imp'
    >>> check_dataset_name("../x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hpcsnp.errors.InputError: data-set name '../x' is not a plain name: use letters, digits, ...
    """
    if not _NAME_RE.match(name or "") or len(name) > 200:
        hint = "" if given else " (it comes from the store's file name: give --name NAME)"
        raise InputError(f"data-set name {name!r} is not a plain name: use letters, digits, '.', '_' and '-', "
                         f"starting with a letter or digit{hint}")
    return name


def dataset_name(store, name: str | None) -> str:
    """--name if given, else the store's file name without .zarr; checked either way."""
    return check_dataset_name(name, given=True) if name else check_dataset_name(store.name, given=False)


@dataclass(frozen=True)
class DatasetRecord:
    """RUN/<dataset>/dataset.json: the store a data set of the run was trained from, and what
    reduce and predict need of it without opening the store."""

    dataset: str
    store: str  # the store's absolute path when the data set was last bound
    store_id: str | None  # the store's identity (None: written before store ids were recorded)
    n_folds: int
    n_samples: int  # the lines in its folds: the store's, less those its trait has no value for
    n_variants: int
    store_source: dict = field(default_factory=dict)  # what the store was ingested from
    groups: bool = False  # the store has groups (RUN/<dataset>/groups.csv)
    trait: str | None = None  # a trait of a phenotype table in place of the store's phenotype (traits.py)
    pheno: str | None = None  # that table's absolute path
    covar: str | None = None  # a covariate table's absolute path (its columns are fixed effects)
    covar_names: list | None = None  # the columns of it used (None: every column)

    @classmethod
    def of_store(cls, dataset: str, store) -> "DatasetRecord":
        return cls(dataset, str(store.path.resolve()), store.store_id, store.n_folds, len(store.phenotyped),
                   store.n_variants, store.attrs.get("source", {}), store.groups is not None, store.trait,
                   store.trait_source, store.covariate_source, store.covariate_columns)

    @property
    def store_args(self) -> str:
        """The store as a command names it: STORE, then --pheno TABLE --trait NAME for a trait."""
        from shlex import join

        from hpcsnp.traits import view_options

        return join([self.store, *view_options(self.trait, self.pheno, self.covar, self.covar_names)])

    @property
    def default_name(self) -> bool:
        """Whether the data set has the name its store (and trait) give it without --name."""
        from hpcsnp.traits import default_dataset_name

        return default_dataset_name(self.store, self.trait) == self.dataset

    def open_store(self):
        """The store this data set was trained on, with its trait when it has one."""
        from hpcsnp.store import open_store

        return open_store(self.store, trait=self.trait, pheno=self.pheno, covar=self.covar,
                          covar_names=self.covar_names or ())

    @classmethod
    def read(cls, path: Path) -> "DatasetRecord":
        """dataset.json; keys this version does not know are ignored, a missing one is an error."""
        data = read_json(path)
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known} | {"store_id": data.get("store_id")})
        except TypeError as e:
            raise InputError(f"{path}: not a data-set record ({e}); rerun any fold of the data set to rewrite it") \
                from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


@dataclass(frozen=True)
class FoldMetrics:
    """A finished fold's metrics.json (a CNN fold or a baseline's) as every stage reads it:
    the test accuracy, its cost and what it was computed from; ``raw`` holds every key."""

    pcc: float
    mse: float
    mae: float
    seconds: float  # training (a baseline: fitting) seconds
    n_test: int
    store_id: str | None = None  # None: written before store ids were recorded
    config: dict | None = None  # a CNN fold's settings
    epochs: int | None = None  # CNN: epochs run and the best (validation) epoch
    best_epoch: int | None = None
    saliency_seconds: float = 0.0
    peak_rss_mb: float | None = None
    target_mean: float | None = None  # CNN: the training target's mean and sd (predictions are un-scaled)
    target_sd: float | None = None
    theta: float | None = None  # a kernel baseline's chosen bandwidth and distance
    distance: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, path: Path) -> "FoldMetrics":
        data = read_json(path)
        known = {f.name for f in fields(cls)} - {"raw"}
        try:
            return cls(**{k: v for k, v in data.items() if k in known}, raw=data)
        except TypeError as e:
            raise InputError(f"{path}: not a fold's metrics ({e}); the fold is damaged: redo it with --force") \
                from None


def bound_to(info: DatasetRecord, store) -> bool:
    """Whether a data set's record (dataset.json) names this store: its store id, or for a
    record written before store ids were, its path."""
    if info.store_id is not None:
        return info.store_id == store.store_id
    return Path(info.store).resolve() == Path(store.path).resolve()


def read_json(path: Path) -> dict:
    """A JSON file of the run; an unreadable or truncated one is an error naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be read ({e}); the file is damaged: redo what wrote it "
                         "(for a fold: --force)") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object; the file is damaged")
    return data


def check_same_store(done_metrics: Path, store, what: str) -> None:
    """A finished output (its metrics.json) must come from this write of the store; outputs
    written before store ids were recorded are accepted."""
    recorded = read_json(done_metrics).get("store_id")
    if recorded is not None and recorded != store.store_id:
        raise InputError(f"{what} in {done_metrics.parent} was computed from another write of a store "
                         f"named {store.name!r} (store id {recorded}, {store.path} is now {store.store_id}); "
                         "--force redoes it from this store, or use another --run or --name")


# --- the run's settings ---------------------------------------------------------------

def config_differences(a: dict, b: dict) -> list[str]:
    """'key: A vs B' for every setting (other than EXECUTION_ONLY ones) that differs."""
    keys = sorted((set(a) | set(b)) - EXECUTION_ONLY)
    return [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def normalised_config(data: dict) -> dict:
    """Every setting, defaults filled in for keys an older version did not record."""

    try:
        return Config.from_dict(data).to_dict()
    except InputError:  # keys of another version: compare as recorded
        return dict(data)


class RunDir:
    """One run directory: where everything of a run lives, and the operations on it that
    keep it consistent.  Every path of the layout is built here and nowhere else."""

    def __init__(self, path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # --- the layout -------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_JSON

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def output(self, name: str) -> Path:
        """A run-level output file (written only by reduce)."""
        return self.path / name

    def dataset_dir(self, dataset: str) -> Path:
        return self.path / dataset

    def dataset_json(self, dataset: str) -> Path:
        return self.path / dataset / "dataset.json"

    def variants_csv(self, dataset: str) -> Path:
        return self.path / dataset / "variants.csv"

    def groups_csv(self, dataset: str) -> Path:
        """sample_id, group: written when the store has groups (within-group accuracy)."""
        return self.path / dataset / "groups.csv"

    def fold(self, dataset: str, fold: int) -> Path:
        """A finished CNN fold (the directory exists only once it is complete)."""
        return self.path / dataset / f"fold_{fold}"

    def partial(self, dataset: str, fold: int) -> Path:
        """Where a CNN fold is trained and checkpointed until it is complete."""
        return self.path / dataset / f"fold_{fold}.partial"

    def shard(self, dataset: str, fold: int, method: str) -> Path:
        """A finished CNN fold's shard of one attribution method (per-SNP sums over its test lines)."""
        return self.fold(dataset, fold) / shard_file(method)

    def baseline(self, dataset: str, encoding: str, fold: int) -> Path:
        return self.path / dataset / f"baseline_{encoding}" / f"fold_{fold}"

    def model_fold(self, dataset: str, model: str, fold: int) -> Path:
        """The fold directory of a model as reduce names it: ``cnn`` or ``gblup_<encoding>``."""
        if model == CNN:
            return self.fold(dataset, fold)
        return self.baseline(dataset, baseline_kind(model), fold)

    def baseline_cache(self, dataset: str, encoding: str) -> Path:
        """Where a data set's Gram matrix for one encoding is cached."""
        return self.path / dataset / f"baseline_{encoding}"

    def task_log(self, dataset: str, fold: int, kind: str = "train") -> Path:
        return self.logs / (f"{dataset}_fold{fold}.log" if kind == "train" else f"{dataset}_fold{fold}.{kind}.log")

    # --- state ------------------------------------------------------------------------

    def is_complete(self, dataset: str, fold: int) -> bool:
        d = self.fold(dataset, fold)
        return d.is_dir() and all((d / f).exists() for f in FOLD_FILES)

    def datasets(self) -> list[DatasetRecord]:
        """Every data set's record (dataset.json), in name order."""
        return [DatasetRecord.read(p) for p in sorted(self.path.glob("*/dataset.json"))]

    def finished_outputs(self, dataset: str) -> list[Path]:
        """The finished folds (CNN and baselines) of a data set."""
        d = self.dataset_dir(dataset)
        return sorted(p.parent for p in [*d.glob("fold_*/metrics.json"), *d.glob("baseline_*/fold_*/metrics.json")])

    def write_dataset_info(self, dataset: str, store, *, force: bool = False) -> None:
        """RUN/<dataset>/dataset.json and variants.csv: what reduce needs without the store.
        Every fold task writes the same content by atomic rename, so concurrent tasks agree;
        variants.csv is rewritten when the store is another write than the one recorded.
        Binding a data set that has finished folds to another store (or another write of
        it) is refused unless ``force`` (a fold redone with --force): one mistaken command
        must not leave every finished fold looking stale."""

        self.dataset_dir(dataset).mkdir(parents=True, exist_ok=True)
        info_path, variants = self.dataset_json(dataset), self.variants_csv(dataset)
        try:
            recorded = DatasetRecord.read(info_path) if info_path.exists() else None
        except InputError:  # damaged: rewritten below
            recorded = None
        same = recorded is not None and bound_to(recorded, store)
        if recorded is not None and not same and not force:
            done = self.finished_outputs(dataset)
            if done:
                raise InputError(f"{self}/{dataset} was trained on {recorded.store} (store id "
                                 f"{recorded.store_id}) and has {len(done)} finished fold(s); {store.path} "
                                 f"is another store or another write of it (store id {store.store_id}): give the "
                                 "trained store, another --name or --run, or --force to redo this data set's folds "
                                 "from the new store")
        if not same or not variants.exists():
            tmp = variants.with_name(f"variants.csv.tmp-{os.getpid()}")
            store.variants_frame().to_csv(tmp, index=False)
            os.replace(tmp, variants)
        groups = self.groups_csv(dataset)
        if store.groups is not None and (not same or not groups.exists()):
            import pandas as pd

            tmp = groups.with_name(f"groups.csv.tmp-{os.getpid()}")
            pd.DataFrame({"sample_id": store.sample_id, "group": store.groups}).to_csv(tmp, index=False)
            os.replace(tmp, groups)
        elif store.groups is None and not same:
            groups.unlink(missing_ok=True)
        atomic_write_text(info_path, DatasetRecord.of_store(dataset, store).to_json())

    def trained_dataset(self, store, name: str | None) -> str:
        """The data set of this run that ``store`` was trained as (``name``, else the store's
        name), for a verb that adds to it (``gwas --run``).  Only train and cv bind a data set
        to a store: the data set must exist and come from this very write of the store,
        else the verb is refused before it writes anything into the run."""
        ds = dataset_name(store, name)
        path = self.dataset_json(ds)
        if not path.exists():
            have = [d.dataset for d in self.datasets()] if self.path.is_dir() else []
            holds = f"it holds {', '.join(have)}" if have else "it holds no trained data set"
            raise InputError(f"{self}: no data set {ds!r} ({holds}); --run adds to a data set that `hpcsnp cv` or "
                             "`hpcsnp train` made from this store (choose it with --name), or use -o DIR for "
                             "outputs outside a run")
        info = DatasetRecord.read(path)
        recorded, trained_on = info.store_id, info.store
        if not bound_to(info, store):
            raise InputError(f"{self}/{ds} was trained on {trained_on} (store id {recorded}); {store.path} is "
                             f"another store or another write of it (store id {store.store_id}): give the store "
                             "the data set was trained on, or use -o DIR for outputs outside the run")
        return ds

    # --- the run's settings -----------------------------------------------------------

    def config(self) -> dict | None:
        """RUN/config.json as a dict of every setting, or None when the run has none yet."""

        return Config.load(self.config_path).to_dict() if self.config_path.exists() else None

    def adopt_config(self, cfg, *, explicit: bool):
        """The settings a fold of this run trains with.  Without explicit settings (no
        --config, --publication or hyperparameter option) the run's config.json is used;
        explicit settings must equal it.  A run without config.json gets one from these."""

        path = self.config_path
        have = self.config()
        if have is None:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{CONFIG_JSON}.{os.getpid()}")
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            try:
                os.link(tmp, path)  # exclusive: of two tasks starting at once, one writes it
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            have = self.config()
        if not explicit:
            if have != cfg.to_dict():
                logger.info(f"using the run's settings from {path}")
            return Config.from_dict(have)
        diff = config_differences(have, cfg.to_dict())
        if diff:
            raise InputError(f"{path} holds this run's settings and this command's differ ({'; '.join(diff)}; "
                             f"run vs command): train with --config {path} (or no settings options), or use "
                             "another --run for other settings")
        return cfg

    def save_config(self, cfg, *, force: bool) -> Path:
        """cv's settings become the run's; a run set up with other settings is refused
        unless --force (which redoes every fold).  ``cfg`` None (no settings chosen): the
        run's own settings, else the defaults."""

        have = self.config()
        if cfg is None:
            if have is not None:
                return self.config_path
            cfg = Config()
        if have is not None and not force:
            diff = config_differences(have, cfg.to_dict())
            if diff:
                raise InputError(f"{self.config_path}: this run was set up with other settings "
                                 f"({'; '.join(diff)}; run vs command); use another --run, the same settings "
                                 f"(--config {self.config_path}), or --force to redo every fold with the new ones")
        cfg.save(self.config_path)
        return self.config_path

    # --- fold locks -------------------------------------------------------------------

    def _lock_path(self, dataset: str, fold: int) -> Path:
        return self.path / dataset / f"fold_{fold}.lock"

    @contextlib.contextmanager
    def lock(self, dataset: str, fold: int):
        """Exclusive lock on one fold (flock on ``fold_<i>.lock``): a second process training
        the same fold fails at once instead of clobbering it.  The kernel drops the lock when
        its holder dies, even by SIGKILL, so a requeued task is never locked out."""
        import fcntl

        with open(self._lock_path(dataset, fold), "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise FoldBusyError(f"{dataset} fold {fold} is being trained by {holder}; not starting a "
                                    "second copy (the lock goes when that process ends)") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            fh.flush()
            try:
                yield
            finally:
                fh.seek(0)
                fh.truncate()
                fcntl.flock(fh, fcntl.LOCK_UN)

    def holder(self, dataset: str, fold: int) -> str | None:
        """Who trains this fold now ("pid N on HOST"), or None when nobody holds its lock."""
        import fcntl

        path = self._lock_path(dataset, fold)
        if not path.exists():
            return None
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return fh.read().strip() or "another process"
            fcntl.flock(fh, fcntl.LOCK_UN)
        return None
