"""The epoch loop of one model: epochs over the fold's training lines, early stopping on the
validation fold, learning-rate decay on a plateau, a checkpoint after every epoch."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from hpcsnp.resources import rss_mb

if TYPE_CHECKING:
    from hpcsnp.cnn.checkpoint import Checkpointer
    from hpcsnp.cnn.steps import CompiledSteps
    from hpcsnp.cnn.train import FoldSources


class EarlyStopping:
    """Counts epochs without a better validation MAE (``best_mae``, ``best_epoch``, ``wait``
    live in the checkpointed state); stops after ``patience`` of them."""

    def __init__(self, state: dict, cfg, patience: int):
        self.state, self.cfg, self.patience = state, cfg, patience

    def update(self, epoch: int, val_mae: float) -> bool:
        """Record an epoch; True when it improved on the best."""
        s = self.state
        improved = s["best_mae"] is None or val_mae < s["best_mae"] - self.cfg.min_delta
        if improved:
            s.update(best_mae=val_mae, best_epoch=epoch, wait=0)
        else:
            s["wait"] += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.state["wait"] >= self.patience

    @property
    def go_on(self) -> bool:
        return self.state["epoch"] < self.cfg.max_epochs and self.state["wait"] <= self.patience


class Plateau:
    """Multiplies the learning rate by ``lr_decay_factor`` after ``patience`` epochs without
    improvement (0: never), counted afresh after each cut (``lr``, ``lr_wait`` in the state)."""

    def __init__(self, state: dict, cfg, optimizer, patience: int):
        self.state, self.cfg, self.optimizer, self.patience = state, cfg, optimizer, patience

    def update(self, improved: bool) -> None:
        s, cfg = self.state, self.cfg
        if improved:
            s["lr_wait"] = 0
            return
        s["lr_wait"] = s.get("lr_wait", 0) + 1
        if self.patience and s["lr_wait"] >= self.patience:
            s["lr"] = max(s.get("lr", cfg.learning_rate) * cfg.lr_decay_factor, cfg.min_learning_rate)
            self.optimizer.learning_rate.assign(s["lr"])
            s["lr_wait"] = 0

    @property
    def lr(self) -> float:
        return float(self.state.get("lr", self.cfg.learning_rate))


def fit_epochs(steps: CompiledSteps, sources: FoldSources, state: dict, ckpt: Checkpointer, cfg, y,
               n_threads: int, say) -> dict:
    """Epochs until early stopping or max_epochs, each checkpointed; returns the CPU use and
    the patience in epochs (the configured epochs, raised to cover the patience in steps)."""
    n_steps = -(-len(sources.train) // cfg.batch_size)
    if cfg.steps_per_epoch:
        n_steps = min(n_steps, cfg.steps_per_epoch)
    patience, lr_patience = cfg.epochs_patience(n_steps)
    if (patience, lr_patience) != (cfg.patience, cfg.lr_decay_patience):
        say(f"{n_steps} optimiser steps an epoch: patience {patience} epochs, learning rate halved after "
            f"{lr_patience} (--patience-steps {cfg.patience_steps}, --lr-decay-steps {cfg.lr_decay_steps})")
    stopping = EarlyStopping(state, cfg, patience)
    plateau = Plateau(state, cfg, steps.optimizer, lr_patience)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while stopping.go_on:
        t0 = time.perf_counter()
        epoch = state["epoch"] + 1
        losses = train_epoch(steps, sources.train, state, cfg, epoch, n_threads)
        with steps.averaged():  # the weights validated and kept: the averaged ones, when averaging
            vp, vr = steps.predict(sources.val)
            val_mae = float(np.mean(np.abs(vp - y[vr])))
            improved = stopping.update(epoch, val_mae)
            if improved:
                ckpt.save_best()
        plateau.update(improved)
        state["epoch"] = epoch
        state["train_seconds"] += time.perf_counter() - t0
        state.setdefault("epoch_seconds", []).append(round(time.perf_counter() - t0, 3))
        state["history"].append({"epoch": epoch, "loss": float(np.mean(losses)), "val_mae": val_mae,
                                 "lr": plateau.lr})
        ckpt.save_epoch(state, epoch)
        say(f"epoch {epoch:4d}  loss {np.mean(losses):.4f}  val MAE {val_mae:.4g}  best {state['best_mae']:.4g} @ "
            f"{state['best_epoch']}  {time.perf_counter() - t0:.1f}s  rss {rss_mb('VmRSS'):.0f} MB")
        if stopping.stop:
            break
    # CPU seconds per wall second of this process's epochs: at most the granted cores
    return {"cpu_utilisation": (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9),
            "patience_epochs": patience, "lr_patience_epochs": lr_patience}


def train_epoch(steps: CompiledSteps, source, state: dict, cfg, epoch: int, n_threads: int) -> list[float]:
    """One epoch of optimiser steps over ``source`` (shuffled by seed and epoch, at most
    cfg.steps_per_epoch batches); counts the samples seen in ``state``; the batch losses."""
    losses = []
    batches = source.iterate(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch, threads=n_threads)
    for step, (g, t, _) in enumerate(batches):
        if cfg.steps_per_epoch and step >= cfg.steps_per_epoch:
            break
        losses.append(float(steps.train_step(g, t)))
        state["samples"] = state.get("samples", 0) + int(g.shape[0])
    return losses
