"""A fold's checkpoints: the model, optimiser and loop state saved at the end of every epoch (written
whole, signals held off while they are), and the check that a checkpoint is resumed only with
the settings and store it was written with."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np

from hpcsnp.atomic import atomic_write_text
from hpcsnp.errors import InputError
from hpcsnp.rundir import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    LEGACY_LAST_CHECKPOINT,
    STATE_JSON,
    config_differences,
    read_json,
)


class Checkpointer:
    """The fold's resume state in its partial directory: every run variable in
    ``last-<epoch>.npz``, the best epoch's model variables in ``best.npz``, and the counters,
    settings and store id in ``state.json``, which names its checkpoint.  Written with
    SIGTERM/SIGINT held, so a kill leaves a pair that belongs together."""

    def __init__(self, partial: Path, run_variables, model_variables):
        self.dir, self.run_vars, self.model_vars = partial, run_variables, model_variables
        self.state_path = partial / STATE_JSON

    def resume(self, fresh: dict, cfg, store, optimizer) -> dict:
        """The state checkpointed here (its variables loaded), else ``fresh``."""
        if not self.state_path.exists():
            return fresh
        state = read_json(self.state_path)
        check_resumable(state, cfg, store, self.dir)
        load_variables(self.dir / state.get("checkpoint", LEGACY_LAST_CHECKPOINT), self.run_vars)
        optimizer.learning_rate.assign(state.get("lr", cfg.learning_rate))
        return state

    def save_best(self) -> None:
        save_variables(self.dir / BEST_CHECKPOINT, self.model_vars)

    def restore_best(self) -> None:
        load_variables(self.dir / BEST_CHECKPOINT, self.model_vars)

    def save_epoch(self, state: dict, epoch: int) -> None:
        with signals_held():
            previous = state.get("checkpoint")
            state["checkpoint"] = LAST_CHECKPOINT.format(epoch=epoch)
            save_variables(self.dir / state["checkpoint"], self.run_vars)
            atomic_write_text(self.state_path, json.dumps(state) + "\n")  # after the checkpoint it describes
            if previous and previous != state["checkpoint"]:
                (self.dir / previous).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove the resume files once the fold's outputs are written."""
        for name in [*(p.name for p in self.dir.glob("last*.npz")), BEST_CHECKPOINT, STATE_JSON]:
            (self.dir / name).unlink(missing_ok=True)


def save_variables(path: Path, variables) -> None:
    """Values of ``variables`` in order, written atomically (a kill leaves the old file)."""
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, *[np.asarray(v.numpy()) for v in variables])
    os.replace(tmp, path)


def load_variables(path: Path, variables) -> None:
    with np.load(path) as data:
        values = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(values) != len(variables):
        raise InputError(f"{path}: checkpoint holds {len(values)} variables, the model has "
                         f"{len(variables)}; remove {path.parent} or use --force")
    for v, value in zip(variables, values):
        v.assign(value)


def _savez_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def check_resumable(state: dict, cfg, store, partial: Path) -> None:
    """A checkpoint resumes only with the settings and the store it was written with."""
    problems = []
    if "config" in state:
        problems += config_differences(state["config"], cfg.to_dict())
    if state.get("store_id") not in (None, store.store_id):
        problems.append(f"store id {state['store_id']} vs {store.store_id} ({store.path} was re-ingested)")
    if problems:
        raise InputError(f"{partial} was checkpointed with other settings than this command's "
                         f"({'; '.join(problems)}; checkpoint vs command): rerun with the checkpoint's "
                         "settings to resume it, or --force to start this fold afresh")


@contextlib.contextmanager
def signals_held(signals=(signal.SIGTERM, signal.SIGINT)):
    """Run the block whole: SIGTERM/SIGINT arriving inside it are noted, and raised again
    once it ends, to the handlers that were in place.  (Blocking them with pthread_sigmask
    does not hold them: it holds them off the main thread only, another thread, one of
    TensorFlow's, takes the signal, and Python runs its handler in the main thread at once.)
    Outside the main thread, which alone runs Python's signal handlers, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    held = {s: signal.getsignal(s) for s in signals}
    held = {s: h for s, h in held.items() if h is not None}  # a handler set outside Python cannot be put back
    for s in held:
        signal.signal(s, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(came):
            signal.raise_signal(s)
