"""The run directory: where each data set's folds live, and the checks that keep a run
consistent (one set of settings, one write of each store, names that stay inside it).

Layout::

    RUN/config.json                    the run's settings (cv writes it; train writes it if absent)
    RUN/<dataset>/dataset.json         the store a data set comes from, with its store id
    RUN/<dataset>/variants.csv         its SNP names and positions
    RUN/<dataset>/fold_<i>/            a finished CNN fold (fold_<i>.partial while training)
    RUN/<dataset>/baseline_<enc>/fold_<i>/

This module must not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from pathlib import Path

from hpcsnp.errors import HpcsnpError, InputError

FOLD_FILES = ("model.keras", "predictions.csv", "metrics.json", "saliency.zarr")
CONFIG_JSON = "config.json"
# settings that change how fast a fold runs, not what it computes
EXECUTION_ONLY = frozenset({"eval_batch_size"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class FoldBusyError(HpcsnpError):
    """The fold is locked by another live process."""


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


def fold_dir(run_dir, dataset: str, fold: int) -> Path:
    return Path(run_dir) / dataset / f"fold_{fold}"


def baseline_dir(run_dir, dataset: str, encoding: str, fold: int) -> Path:
    return Path(run_dir) / dataset / f"baseline_{encoding}" / f"fold_{fold}"


def is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).exists() for f in FOLD_FILES)


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


def write_dataset_info(run_dir: Path, dataset: str, store) -> None:
    """RUN/<dataset>/dataset.json and variants.csv: what reduce needs without the store.
    Every fold task writes the same content by atomic rename, so concurrent tasks agree;
    variants.csv is rewritten when the store is another write than the one recorded."""
    from hpcsnp.atomic import atomic_write_text

    d = Path(run_dir) / dataset
    d.mkdir(parents=True, exist_ok=True)
    old = d / "dataset.json"
    try:
        same = json.loads(old.read_text()).get("store_id") == store.store_id
    except (OSError, ValueError, AttributeError):
        same = False
    info = {"dataset": dataset, "store": str(store.path.resolve()), "store_id": store.store_id,
            "n_folds": store.n_folds, "n_samples": store.n_samples, "n_variants": store.n_variants,
            "store_source": store.attrs.get("source", {})}
    if not same or not (d / "variants.csv").exists():
        tmp = d / f"variants.csv.tmp-{os.getpid()}"
        store.variants_frame().to_csv(tmp, index=False)
        os.replace(tmp, d / "variants.csv")
    atomic_write_text(old, json.dumps(info, indent=2) + "\n")


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
    from hpcsnp.config import Config

    try:
        return Config.from_dict(data).to_dict()
    except InputError:  # keys of another version: compare as recorded
        return dict(data)


def run_config(run_dir) -> dict | None:
    """RUN/config.json as a dict of every setting, or None when the run has none yet."""
    from hpcsnp.config import Config

    path = Path(run_dir) / CONFIG_JSON
    return Config.load(path).to_dict() if path.exists() else None


def adopt_run_config(run_dir, cfg, *, explicit: bool, log=None):
    """The settings a fold of this run trains with.  Without explicit settings (no --config,
    --publication or hyperparameter option) a run's config.json is used; explicit settings
    must equal it.  A run without config.json gets one from these settings."""
    from hpcsnp.config import Config

    path = Path(run_dir) / CONFIG_JSON
    have = run_config(run_dir)
    if have is None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{CONFIG_JSON}.{os.getpid()}")
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        try:
            os.link(tmp, path)  # exclusive: of two tasks starting at once, one writes it
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        have = run_config(run_dir)
    if not explicit:
        if log and have != cfg.to_dict():
            log(f"using the run's settings from {path}")
        return Config.from_dict(have)
    diff = config_differences(have, cfg.to_dict())
    if diff:
        raise InputError(f"{path} holds this run's settings and this command's differ ({'; '.join(diff)}; run "
                         f"vs command): train with --config {path} (or no settings options), or use another "
                         "--run for other settings")
    return cfg


def save_run_config(run_dir, cfg, *, force: bool) -> Path:
    """cv's settings become the run's; a run whose folds were trained with other settings is
    refused unless --force (which redoes every fold).  ``cfg`` None (no settings chosen):
    the run's own settings, else the defaults."""
    from hpcsnp.config import Config

    path = Path(run_dir) / CONFIG_JSON
    have = run_config(run_dir)
    if cfg is None:
        if have is not None:
            return path
        cfg = Config()
    if have is not None and not force:
        diff = config_differences(have, cfg.to_dict())
        if diff:
            raise InputError(f"{path}: this run was set up with other settings ({'; '.join(diff)}; run vs "
                             "command); use another --run, the same settings (--config "
                             f"{path}), or --force to redo every fold with the new ones")
    cfg.save(path)
    return path


# --- fold locks -----------------------------------------------------------------------

@contextlib.contextmanager
def fold_lock(final: Path, dataset: str, fold: int):
    """Exclusive lock on one fold (flock on ``fold_<i>.lock``): a second process training
    the same fold fails at once instead of clobbering it.  The kernel drops the lock when
    its holder dies, even by SIGKILL, so a requeued task is never locked out."""
    import fcntl

    path = final.with_name(final.name + ".lock")
    with open(path, "a+") as fh:
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


def fold_holder(final: Path) -> str | None:
    """Who trains this fold now ("pid N on HOST"), or None when nobody holds its lock."""
    import fcntl

    path = final.with_name(final.name + ".lock")
    if not path.exists():
        return None
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "another process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None
