"""Hyperparameters: one dataclass.  The model's are the publication's; the training
defaults were chosen on validation folds (``Config.publication()`` gives the paper's).

Everything that changes a result lives here, so it can be written next to
the outputs (``metrics.json``) and read back (``--config``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from hpcsnp.atomic import atomic_write_text
from hpcsnp.errors import InputError

MIN_FOLDS, MAX_FOLDS = 3, 10  # K-fold CV: K = 3..10 (the fold rules are in store.check_folds)

ACTIVATIONS = ("linear", "relu", "elu", "gelu")  # Keras names
# the value of a setting in records (config.json, metrics.json) written before it existed
# settings recorded under an older name: the old key -> the field
RENAMED = {"seeds": "n_models"}
RECORDED_BEFORE = {"refit": False, "genotype_basis": "onehot", "n_models": 1, "dosage_scale": 1.0,
                   "missing_dosage": "zero", "refit_start": "fresh", "model_schedule": "own",
                   "weight_average": 0.0, "dropout1": None}
PUBLICATION = {"batch_size": 4, "learning_rate": 1e-3, "lr_decay_patience": 0, "patience": 10, "dropout": 0.75,
               "dropout1": None,
               "refit": False, "genotype_basis": "onehot", "n_models": 1, "l2_dense": 0.0, "weight_average": 0.0}
# n_models = 0 (auto): a fold trains as many models as make up this many training lines, at most
# AUTO_SEEDS_MAX (Config.models_per_fold): two for SoyNAM's ~4,050, one from 5,462, five for 1,820
# or fewer
AUTO_SEED_LINES, AUTO_SEEDS_MAX = 8192, 5
GENOTYPE_BASES = ("additive", "onehot")  # hpcsnp.cnn.model.BASES
MISSING_DOSAGES = ("mean", "zero")
REFIT_STARTS = ("warm", "fresh")
MODEL_SCHEDULES = ("auto", "rotate", "own", "shared")


# Attribution methods a fold can compute (--attribution); a signed one's shard holds signed sums
# and its ranking uses the magnitude of their mean over the folds (the others' shards sum
# magnitudes already).
ATTRIBUTION_METHODS = ("saliency", "smoothgrad", "ig", "marginal")
SIGNED_ATTRIBUTIONS = frozenset({"marginal"})
# The ranking reduce leads with (top SNP table, genome plot labels) when its folds computed both
# parts: ``combined`` = sqrt(saliency x |marginal|), per SNP, the geometric mean of which SNP the
# network reads (saliency: sharp, noisy where effects are moderate) and how strongly its
# predictions follow the SNP's region over every line (marginal: LD-smoothed, blind to which
# SNP of a block is causal).  Without marginal shards it is the saliency.
COMBINED = "combined"
COMBINED_PARTS = ("saliency", "marginal")


@dataclass
class Config:
    # model (docs/method.md, Model)
    filters: int = 10
    kernel_1: int = 4
    kernel_2: int = 20
    kernel_shortcut: int = 4
    kernel_3: int = 4
    dropout: float = 0.25  # the publication's 0.75: --publication
    # the dropout after the first two convolutions, on the branch the shortcut bypasses (layer
    # "dropout1"); None = ``dropout``, as published.  Off by default: a quarter of the training
    # step's time; on SoyNAM the headline's PCC within 0.0005, the CNN's alone up to 0.002 lower
    # (bench/RESULTS.md)
    dropout1: float | None = 0.0
    alpha: float = 0.03  # ISRU bound is +-1/sqrt(alpha), on the standardised target
    l2_kernel: float = 0.1
    l2_bias: float = 0.01
    # L2 on the output layer's kernel (the publication has none): without it the part of its
    # random initial weights that the training lines do not determine stays in the predictions
    l2_dense: float = 0.01
    dense_init: str = "truncated_normal"  # or "zeros": the output layer starts at the mean prediction
    activation: str = "linear"  # of every convolution; the publication's network is linear up to its ISRU output
    # the per-SNP coordinates the first convolutions read: "additive" (missing, centred dosage,
    # heterozygote, called; an invertible map of the one-hot channels, so the same functions) or
    # the publication's "onehot" channels themselves
    genotype_basis: str = "additive"
    # the "additive" basis's dosage coordinate is -s / 0 / s for 0 / 1 / 2 copies: a prior of
    # larger additive than dominance effects (the same functions for any s > 0)
    dosage_scale: float = 4.0
    # the dosage coordinate of a missing call in the "additive" basis: "mean" = the SNP's mean over
    # the training lines (GBLUP's mean fill; the missing coordinate keeps what departs from it),
    # "zero" = 0, the heterozygote's
    missing_dosage: str = "mean"
    # training (docs/method.md, Cross-validation)
    # defaults chosen on validation folds for speed and accuracy; the paper's: --publication
    learning_rate: float = 3e-3
    adam_epsilon: float = 1e-7  # Keras' default; large values make Adam's steps proportional to the gradient
    batch_size: int = 64
    patience: int = 5  # 6 in the sweep; 5 stopped at the same best epoch in all 20 folds of the full CV
    lr_decay_patience: int = 2  # >0: multiply the lr by lr_decay_factor after this many epochs without improvement
    lr_decay_factor: float = 0.5
    # the same patience in optimiser steps: an epoch of a small data set is a few steps, so
    # patience counted in epochs alone stops it before it has learnt (0 = epochs only)
    patience_steps: int = 320  # 5 epochs of SoyNAM's ~4,050 training lines at batch 64
    lr_decay_steps: int = 128  # 2 such epochs
    mask_rate: float = 0.0  # share of training calls set to missing (-1) afresh at every step (augmentation)
    # Polyak averaging: validation, early stopping and the model kept use an exponential moving
    # average of the weights over the optimiser steps with this decay (0.99: about the last 100
    # steps), not the last step's weights (0 = off, as published).  The training steps are the
    # same; on SoyNAM height the CNN's PCC was 0.0005 / 0.0015 higher with 16 % fewer epochs
    # (bench/RESULTS.md, "Averaged weights")
    weight_average: float = 0.99
    min_learning_rate: float = 1e-5
    max_epochs: int = 1000
    steps_per_epoch: int = 0  # 0 = every training batch; N = at most N batches an epoch
    step_activation_mb: int = 16  # wider batches are split into micro-batches, gradients accumulated
    min_delta: float = 0.0
    restore_best: bool = True  # keep the weights of the best validation epoch
    # after early stopping, train afresh on the training + validation folds for as many epochs as
    # the validation fold chose, replaying their learning rates (Goodfellow, Bengio & Courville 2016,
    # Deep Learning, algorithm 7.2): the model then learns from the lines GBLUP fits on.  The
    # validation predictions (the ensemble's weights) stay those of the early-stopped model.  Only
    # where a fold's models do not rotate their validation folds (refits)
    refit: bool = True
    # how the refit starts: "fresh" = from the initialisation, replaying every early-stopped epoch
    # with its learning rate (algorithm 7.2 above); "warm" = from the early-stopped weights,
    # ``refit_epochs`` epochs over training + validation at ``refit_lr_factor`` x the learning
    # rate of the best epoch, Adam's moments started afresh: a quarter less time for the whole
    # CV on SoyNAM, at 0.0026 lower CNN PCC and less stable saliency (bench/RESULTS.md, "A warm
    # refit"), so not the default
    refit_start: str = "fresh"
    refit_epochs: int = 2
    refit_lr_factor: float = 1 / 3
    # a fold's later models (seed + 1, ...) with a fresh refit: "own" = each is early-stopped on the
    # validation fold, then refitted; "shared" = only the first model is early-stopped, the others
    # train on training + validation straight away for the epochs and with the learning rates its
    # validation fold chose (the fold's validation predictions are the first model's): on SoyNAM
    # a third less CNN time, but one noisy early stop then cuts every model short (QA's CNN
    # -0.004 PCC, one fold -0.029; bench/RESULTS.md, "One schedule for a fold's models"), so not
    # the default; "rotate" = model k early-stops on the k-th fold after the validation fold (the
    # test fold skipped) and, with two or more models, none is refitted: together they have
    # learnt from every training and validation line (the fold's validation predictions are those
    # of the models that never trained on it).  On SoyNAM (two models a fold) the CNN's epochs
    # roughly halve, its PCC 0.002 lower, the headline's unchanged; on the 2,000-line polygenic
    # simulation (five models on 1,200 training lines) its PCC fell 0.008 (bench/RESULTS.md,
    # "Models on validation folds of their own").  "auto" = rotate for a fold of two models,
    # "own" for any other count
    model_schedule: str = "auto"
    standardize: bool = True  # train-fold mean/sd; predictions are un-scaled
    seed: int = 0
    # models per fold (seeds seed, seed+1, ...), their predictions and saliency averaged; 0 = as
    # many as the fold's training lines call for (models_per_fold): one network trained on a few
    # hundred lines varies with its seed as much as it learns, and such folds train fast
    n_models: int = 0
    fuse_convolutions: bool = True  # train through fused.TrainingForward (same function, fewer FLOPs)
    # the training step's convolutions and dense layer in bfloat16 (float32 weights, optimiser,
    # prediction and saliency): True, False, or "auto" = where the CPU has bfloat16 arithmetic
    # (resources.native_bfloat16; emulated bfloat16 is slower than float32)
    bf16_step: bool | str = "auto"
    # saliency (docs/method.md, Saliency)
    saliency_dropout: bool = False  # True = dropout active, as the dualCNN code did
    # comma-separated: saliency (always computed), smoothgrad, ig, marginal; with marginal the loci
    # are ranked by ``combined`` (bench/RESULTS.md, "Attribution on a polygenic architecture")
    attribution: str = "marginal"
    # input pipeline
    eval_batch_size: int = 256
    eval_activation_mb: int = 32  # prediction/saliency batches shrink so one activation stays under this
    cache: str = "auto"  # auto | always | never: keep the fold's int8 rows in memory
    cache_limit_mb: int = 256
    window_chunks: int = 4  # store chunks shuffled together when streaming

    def __post_init__(self):
        problems = []
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout1 is not None and not 0.0 <= self.dropout1 < 1.0:
            problems.append(f"dropout1 must be in [0, 1), got {self.dropout1}")
        if not 0.0 <= self.mask_rate < 1.0:
            problems.append(f"mask_rate must be in [0, 1), got {self.mask_rate}")
        if not 0.0 <= self.weight_average < 1.0:
            problems.append(f"weight_average must be in [0, 1), got {self.weight_average}")
        for name in ("filters", "kernel_1", "kernel_2", "kernel_shortcut", "kernel_3",
                     "batch_size", "max_epochs", "eval_batch_size", "window_chunks", "step_activation_mb",
                     "eval_activation_mb"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch < 0:
            problems.append(f"steps_per_epoch must be >= 0, got {self.steps_per_epoch}")
        for name in ("patience", "patience_steps", "lr_decay_steps", "n_models"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.alpha <= 0:
            problems.append(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 < self.lr_decay_factor <= 1.0:
            problems.append(f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}")
        if self.lr_decay_patience < 0:
            problems.append(f"lr_decay_patience must be >= 0, got {self.lr_decay_patience}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        bad = [m for m in self.attribution_methods() if m not in ATTRIBUTION_METHODS]
        if bad:
            problems.append(f"attribution must list {', '.join(ATTRIBUTION_METHODS)}, got {', '.join(bad)}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.genotype_basis not in GENOTYPE_BASES:
            problems.append(f"genotype_basis must be one of {', '.join(GENOTYPE_BASES)}, got {self.genotype_basis!r}")
        if self.dense_init not in ("truncated_normal", "zeros"):
            problems.append(f"dense_init must be truncated_normal or zeros, got {self.dense_init!r}")
        if self.missing_dosage not in MISSING_DOSAGES:
            problems.append(f"missing_dosage must be one of {', '.join(MISSING_DOSAGES)}, got {self.missing_dosage!r}")
        if self.dosage_scale <= 0:
            problems.append(f"dosage_scale must be > 0, got {self.dosage_scale}")
        if self.l2_dense < 0:
            problems.append(f"l2_dense must be >= 0, got {self.l2_dense}")
        if self.adam_epsilon <= 0:
            problems.append(f"adam_epsilon must be > 0, got {self.adam_epsilon}")
        if self.refit_start not in REFIT_STARTS:
            problems.append(f"refit_start must be one of {', '.join(REFIT_STARTS)}, got {self.refit_start!r}")
        if self.model_schedule not in MODEL_SCHEDULES:
            problems.append(f"model_schedule must be one of {', '.join(MODEL_SCHEDULES)}, "
                            f"got {self.model_schedule!r}")
        if self.refit_epochs < 1:
            problems.append(f"refit_epochs must be >= 1, got {self.refit_epochs}")
        if not 0.0 < self.refit_lr_factor <= 1.0:
            problems.append(f"refit_lr_factor must be in (0, 1], got {self.refit_lr_factor}")
        if self.bf16_step not in (True, False, "auto"):
            problems.append(f"bf16_step must be true, false or \"auto\", got {self.bf16_step!r}")
        if self.cache not in ("auto", "always", "never"):
            problems.append(f"cache must be auto, always or never, got {self.cache!r}")
        if problems:
            raise InputError("bad configuration: " + "; ".join(problems))

    def ignored(self) -> list[str]:
        """Settings that have no effect in this combination, said as warnings by the CLI.

        >>> Config(bf16_step=True, fuse_convolutions=False).ignored()
        ['--bf16 ignored with --no-fuse (it computes the fused training step in bfloat16)']
        """
        out = []
        if self.bf16_step is True and not self.fuse_convolutions:
            out.append("--bf16 ignored with --no-fuse (it computes the fused training step in bfloat16)")
        elif self.bf16_step is True and self.activation != "linear":
            out.append(f"--bf16 ignored with --activation {self.activation} (the fused training step it computes "
                       "composes linear convolutions)")
        if self.cache != "auto" and self.cache_limit_mb != Config.cache_limit_mb:
            out.append(f"--cache-limit-mb ignored with --cache {self.cache}")
        return out

    def bf16(self) -> bool:
        """Whether the training step computes in bfloat16 here: ``bf16_step``, with "auto"
        resolved by this machine's CPU; only the fused step with linear convolutions has a
        bfloat16 version.

        >>> Config(bf16_step=True).bf16(), Config(bf16_step=False).bf16()
        (True, False)
        >>> Config(bf16_step=True, fuse_convolutions=False).bf16()
        False
        """
        from hpcsnp.resources import native_bfloat16, tensorflow_device

        if not self.fuse_convolutions or self.activation != "linear" or self.bf16_step is False:
            return False
        # "auto" on a GPU: float32, the precision its results were checked in
        return self.bf16_step is True or (native_bfloat16() and tensorflow_device() == "CPU")

    def attribution_methods(self) -> list[str]:
        """The attributions a fold computes: saliency first, then the others.

        >>> Config(attribution="ig,smoothgrad").attribution_methods()
        ['saliency', 'ig', 'smoothgrad']
        """
        given = [m.strip() for m in self.attribution.split(",") if m.strip()]
        return ["saliency", *dict.fromkeys(m for m in given if m != "saliency")]

    def shares_schedule(self) -> bool:
        """Whether a fold's later models skip early stopping and replay the first model's
        schedule: ``model_schedule`` "shared" with a fresh refit (a warm refit starts from each
        model's own early-stopped weights; without a refit each model is its early-stopped run).

        >>> shared = Config(model_schedule="shared")
        >>> shared.shares_schedule(), shared.replace(refit_start="warm").shares_schedule(), Config().shares_schedule()
        (True, False, False)
        >>> shared.replace(refit=False).shares_schedule()
        False
        """
        return self.model_schedule == "shared" and self.refit and self.refit_start == "fresh"

    def rotates(self, n_models: int) -> bool:
        """Whether a fold of ``n_models`` models gives each a validation fold of its own:
        ``model_schedule`` "rotate" with two or more, or "auto" with two (SoyNAM's size, where
        it halves the CNN's epochs for 0.002 PCC; smaller folds train three or more, need every
        line they can learn from, and train fast).

        >>> [Config().rotates(n) for n in (1, 2, 3)], [Config(model_schedule="rotate").rotates(n) for n in (1, 2, 3)]
        ([False, True, False], [False, True, True])
        """
        return n_models > 1 and (self.model_schedule == "rotate" or self.model_schedule == "auto" and n_models == 2)

    def refits(self, n_models: int) -> bool:
        """Whether a fold of ``n_models`` models refits them on training + validation: ``refit``,
        except where they rotate their validation folds (``rotates``): together they have learnt
        from every training and validation line.

        >>> Config().refits(1), Config().refits(2), Config().refits(3), Config(model_schedule="own").refits(2)
        (True, False, True, True)
        >>> Config(refit=False).refits(1)
        False
        """
        return self.refit and not self.rotates(n_models)

    def models_per_fold(self, n_train: int) -> int:
        """Models a fold trains: ``n_models``, or with n_models = 0 round(AUTO_SEED_LINES / training
        lines) between 1 and AUTO_SEEDS_MAX, so no fold spends much more than the training of
        two SoyNAM-sized models (a small store, capped at AUTO_SEEDS_MAX, spends less).

        >>> [Config().models_per_fold(n) for n in (4047, 2000, 1500, 900, 600)], Config(n_models=1).models_per_fold(600)
        ([2, 4, 5, 5, 5], 1)

        The bounds --help states (one model from 5,462 lines, five up to 1,820):

        >>> [Config().models_per_fold(n) for n in (5461, 5462, 1820, 1821)]
        [2, 1, 5, 4]
        """
        if self.n_models:
            return self.n_models
        return min(AUTO_SEEDS_MAX, max(1, round(AUTO_SEED_LINES / max(1, n_train))))

    def epochs_patience(self, steps_per_epoch: int) -> tuple[int, int]:
        """(early-stopping patience, learning-rate patience) in epochs for epochs of this many
        optimiser steps: the epoch counts, raised to cover patience_steps / lr_decay_steps.

        >>> Config().epochs_patience(64), Config().epochs_patience(15), Config(patience_steps=0).epochs_patience(15)
        ((5, 2), (22, 9), (5, 9))
        """
        def cover(epochs: int, steps: int) -> int:
            return max(epochs, -(-steps // max(1, steps_per_epoch)))
        lr = cover(self.lr_decay_patience, self.lr_decay_steps) if self.lr_decay_patience else 0
        return cover(self.patience, self.patience_steps), lr

    def first_dropout(self) -> float:
        """The rate of the dropout after the first two convolutions (layer "dropout1").

        >>> Config().first_dropout(), Config(dropout1=None).first_dropout(), Config.publication().first_dropout()
        (0.0, 0.25, 0.75)
        """
        return self.dropout if self.dropout1 is None else self.dropout1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def publication(cls, **changes) -> "Config":
        """The publication's training settings (docs/method.md, Cross-validation): batch 4, constant Adam lr
        0.001, patience 10, dropout 0.75, the early-stopped model kept (no refit), the one-hot
        channels read directly, no L2 on the output layer."""
        return cls(**{**PUBLICATION, **changes})

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Settings as recorded; a key the record lacks takes the value it had before the
        setting existed (RECORDED_BEFORE), else the default; one recorded under an older name
        (RENAMED) is read under its new one.

        >>> Config.from_dict({"seeds": 3}).n_models
        3
        """
        data = {RENAMED.get(k, k): v for k, v in data.items()}
        data = {**RECORDED_BEFORE, **data}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown configuration keys: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**data)

    @classmethod
    def load(cls, path) -> "Config":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read configuration: {e}") from None
        return cls.from_dict(data.get("config", data))

    def save(self, path) -> None:

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
