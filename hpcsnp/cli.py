"""The command line: a thin click skin over the package's functions.

Each verb parses options, calls one function and prints its result to
stdout; logs and progress go to stderr.  The one module where hpcsnp imports
its own stages inside functions: each verb imports its stage (and with it numpy,
pandas, zarr, Dask or TensorFlow) when it runs, so ``--help`` and shell
completion answer in a fifth of a second.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from hpcsnp import __version__
from hpcsnp.config import (
    ACTIVATIONS,
    AUTO_SEED_LINES,
    AUTO_SEEDS_MAX,
    GENOTYPE_BASES,
    MAX_FOLDS,
    MIN_FOLDS,
    MISSING_DOSAGES,
    MODEL_SCHEDULES,
    PUBLICATION,
    REFIT_STARTS,
    Config,
)
from hpcsnp.errors import HpcsnpError, Terminated

VERBOSE = {"level": 0}


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (HpcsnpError, Terminated) as e:
            if VERBOSE["level"]:
                raise
            click.echo(f"hpcsnp: error: {e}", err=True)
            sys.exit(e.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors: click prints them with the usage line, exit 2
        except KeyboardInterrupt:
            click.echo("hpcsnp: interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # an internal failure: short by default, full with -v
            if VERBOSE["level"]:
                raise
            click.echo(f"hpcsnp: internal error: {type(e).__name__}: {e} (run with -v for the traceback)",
                       err=True)
            sys.exit(1)
    return wrapper


class _Lines(logging.Formatter):
    """Progress as it is; warnings as 'hpcsnp: warning: ...'; debug lines with their module."""

    def format(self, record):
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"hpcsnp: warning: {message}"
        if record.levelno < logging.INFO:
            return f"[{record.name}] {message}"
        return message


def setup_logging(verbose: int, quiet: bool = False) -> None:
    """One handler on stderr for every hpcsnp logger: INFO, DEBUG with -v, WARNING with -q."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    root = logging.getLogger("hpcsnp")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False


logger = logging.getLogger("hpcsnp.cli")


def warn(message: str) -> None:
    logger.warning(message)


def _warn_ignored(context: str, **given) -> None:
    """Say which of the given options have no effect in this combination."""
    used = [f"--{k.replace('_', '-')}" for k, v in given.items() if v not in (None, False, ())]
    if used:
        warn(f"{', '.join(used)} ignored {context}")


def _progress_default():
    return sys.stderr.isatty()


progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress bars on stderr (default: when stderr is a terminal).")
threads_option = click.option("--threads", "-p", type=click.IntRange(min=1), default=None,
                              help="Cores to use (default: HPCSNP_THREADS, else SLURM_CPUS_PER_TASK, else the "
                                   "CPU affinity within any cgroup CPU quota).")

solver_option = click.option(
    "--solver", type=click.Choice(["auto", "exact", "scalable"]), default="auto", show_default=True,
    envvar="HPCSNP_SOLVER",
    help="Linear models (GBLUP, GWAS): exact holds n x n matrices (24 n^2 bytes); scalable solves by conjugate "
         "gradients over the genotypes in blocks, in memory of (n + p) x a block (RKHS is then skipped); auto: "
         "exact where it fits in the memory granted, and says which it chose. Also HPCSNP_SOLVER.")
scheduler_option = click.option(
    "--scheduler", default="threads", show_default=True,
    help="Dask scheduler of the blocked work (the scalable solver, reduce): threads, processes, synchronous, "
         "slurm:N (N worker jobs submitted to SLURM for this command, sized by HPCSNP_DASK_CORES/MEM/TIME; "
         "dask-jobqueue), or the address of a distributed scheduler (tcp://HOST:PORT) or its scheduler file "
         "(.json).")

DEFAULTS = Config()

# train's and cv's --help: the settings grouped by what they change (parameter name -> section);
# every other option is the verb's own and comes first
HELP_SECTIONS = {
    "Settings as a whole": ("config_path", "publication"),
    "Training": ("max_epochs", "batch_size", "learning_rate", "patience", "patience_steps", "lr_decay_patience",
                 "lr_decay_steps", "dropout", "dropout1", "mask_rate", "weight_average", "refit", "refit_start",
                 "refit_epochs", "model_schedule", "n_models", "seed", "standardize"),
    "Model": ("genotype_basis", "dosage_scale", "missing_dosage", "l2_dense", "activation", "alpha"),
    "Attribution": ("attribution",),
    "Speed and memory": ("fuse_convolutions", "bf16_step", "step_activation_mb", "steps_per_epoch", "cache",
                         "cache_limit_mb"),
}


class SectionedCommand(click.Command):
    """A command whose --help lists its own options first, then the settings by HELP_SECTIONS."""

    def format_options(self, ctx, formatter):
        section_of = {name: title for title, names in HELP_SECTIONS.items() for name in names}
        groups: dict[str, list] = {"Options": []}
        for param in self.get_params(ctx):
            record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
            if record:
                groups.setdefault(section_of.get(param.name, "Options"), []).append(record)
        for title in ["Options", *HELP_SECTIONS]:
            if groups.get(title):
                with formatter.section(title):
                    formatter.write_dl(groups[title])



def trait_options(fn):
    """--pheno TABLE --trait NAME: another trait of the store's lines; --covar TABLE
    [--covar-name C]: fixed effects (hpcsnp/traits.py)."""
    fn = covar_options(fn)
    fn = click.option("--trait", help="Trait column of --pheno [its second column]; a run's data set is then "
                                      "named <store>.<trait>.")(fn)
    return click.option("--pheno", type=click.Path(exists=True, dir_okay=False),
                        help="Phenotype table (first column the store's sample ids, a column per trait; tab or "
                             "comma separated) whose --trait replaces the store's phenotype; lines without a "
                             "value are left out of every fold.")(fn)


def covar_options(fn):
    fn = click.option("--covar-name", "covar_names", multiple=True, metavar="COLUMN",
                      help="A column of --covar to use; repeat for several [every column]. COLUMN:cat reads "
                           "a numeric column (family or trial numbers) as categories.")(fn)
    return click.option("--covar", type=click.Path(exists=True, dir_okay=False),
                        help="Covariate table (first column the sample ids): fixed effects in the baselines, "
                             "refits and GWAS (either solver), and taken out of the CNN's target by least squares "
                             "on the training lines. A non-numeric column is categorical (one effect per level). "
                             "Lines without a value are left out of every fold.")(fn)


run_option = click.option("--run", "run_opt", type=click.Path(file_okay=False), help="Run directory.")


def _run_and_rest(run_opt, positional: list) -> tuple[str, list]:
    """The run (--run RUN, else the first positional argument) and the other positional
    arguments: every verb takes the run as --run; reduce, query and predict still take it
    as their first argument, the older form, with a warning."""
    positional = [p for p in positional if p is not None]
    if run_opt is not None:
        return run_opt, positional
    if not positional:
        raise click.UsageError("give the run directory: --run RUN")
    warn(f"the run as the first argument is the older form and will go: give it as --run {positional[0]}")
    return positional[0], positional[1:]


def _out(out_opt, positional, default=None) -> str:
    """Where a verb writes: -o PATH (every verb's way), else OUT as a positional argument
    (simulate's and demo's older form), else ``default``."""
    if out_opt is not None and positional is not None and out_opt != positional:
        raise click.UsageError(f"give the output once: -o {out_opt} or {positional}, not both")
    out = out_opt or positional or default
    if out is None:
        raise click.UsageError("give the output with -o PATH")
    return out


def config_options(fn):
    """Hyperparameter options shared by train and cv; unset ones keep the Config default."""
    opts = [
        click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                     help="JSON file of hyperparameters (as written to RUN/config.json)."),
        click.option("--publication", is_flag=True,
                     help="Start from the publication's training settings (batch {batch_size}, lr {learning_rate} "
                          "constant, patience {patience}, dropout {dropout}) instead of the defaults; other options "
                          "still apply.".format(**PUBLICATION)),
        click.option("--epochs", "max_epochs", type=click.IntRange(min=1),
                     help=f"Maximum epochs [{DEFAULTS.max_epochs}]."),
        click.option("--batch-size", type=click.IntRange(min=1), help=f"Training batch size [{DEFAULTS.batch_size}]."),
        click.option("--patience", type=click.IntRange(min=0),
                     help=f"Early-stopping patience in epochs [{DEFAULTS.patience}]."),
        click.option("--lr", "learning_rate", type=float, help=f"Adam learning rate [{DEFAULTS.learning_rate}]."),
        click.option("--lr-decay-patience", type=click.IntRange(min=0),
                     help=f"Halve the learning rate after this many epochs without a better validation MAE; "
                          f"0 = constant [{DEFAULTS.lr_decay_patience}]."),
        click.option("--patience-steps", type=click.IntRange(min=0),
                     help=f"Raise --patience to cover this many optimiser steps, so that small data sets "
                          f"(few steps an epoch) are not stopped before they learn; 0 = epochs only "
                          f"[{DEFAULTS.patience_steps}: 5 epochs of 4,000 lines at batch 64]."),
        click.option("--lr-decay-steps", type=click.IntRange(min=0),
                     help=f"Raise --lr-decay-patience to cover this many optimiser steps [{DEFAULTS.lr_decay_steps}]."),
        click.option("--refit/--no-refit", default=None,
                     help="After early stopping, go on training the model on the training + validation folds "
                          "(the lines GBLUP fits on) [on, except for models that rotate their validation folds: "
                          "--model-schedule]. --no-refit keeps the early-stopped model, as the publication did."),
        click.option("--refit-start", type=click.Choice(REFIT_STARTS),
                     help=f"fresh: the refit starts from the initialisation and replays every epoch the "
                          f"validation fold chose at the learning rates they had (as long again as the "
                          f"early-stopped training); warm: it starts from the early-stopped weights and trains "
                          f"--refit-epochs epochs at a third of the best epoch's learning rate (on SoyNAM with "
                          f"--model-schedule own the whole CV a quarter faster, the CNN's PCC 0.003 lower, its "
                          f"saliency less stable between folds) [{DEFAULTS.refit_start}]."),
        click.option("--refit-epochs", type=click.IntRange(min=1),
                     help=f"Epochs of a warm refit [{DEFAULTS.refit_epochs}]."),
        click.option("--model-schedule", type=click.Choice(MODEL_SCHEDULES),
                     help=f"With two or more models per fold: rotate = each model early-stops on a validation "
                          f"fold of its own (the first on the fold after the test fold, the next on the fold "
                          f"after that, ...) and none is refitted: together they have learnt from every training "
                          f"and validation line, in about half the CNN's time of own (on SoyNAM, two models a "
                          f"fold: the CNN's PCC 0.002 lower, the headline's unchanged; on a 2,000-line "
                          f"simulation, five models a fold: 0.008 lower); own = every model is early-stopped on "
                          f"the validation fold, then refitted (--refit); shared = only the first one is, the "
                          f"others train on training + validation straight away for the epochs and learning rates "
                          f"it chose; auto = rotate for a fold of two models, own otherwise. A fold of one model "
                          f"is refitted whatever the schedule [{DEFAULTS.model_schedule}]."),
        click.option("--mask-rate", type=click.FloatRange(0, 1, max_open=True),
                     help=f"Missing-genotype augmentation: the share of training calls set to missing, drawn "
                          f"afresh every step [{DEFAULTS.mask_rate}]."),
        click.option("--weight-average", type=click.FloatRange(0, 1, max_open=True), metavar="DECAY",
                     help="Validate, early-stop and keep an exponential moving average of the weights over the "
                          "optimiser steps with this decay (e.g. 0.99: about the last 100 steps) instead of the "
                          f"last step's weights; 0 = off [{DEFAULTS.weight_average}]."),
        click.option("--dropout", type=float,
                     help="Dropout rate after conv3 and before the output layer (after the first two "
                          f"convolutions too with --publication; see --dropout1) [{DEFAULTS.dropout}]."),
        click.option("--dropout1", type=click.FloatRange(0, 1, max_open=True), metavar="RATE",
                     help="Dropout rate after the first two convolutions, on the branch the shortcut bypasses "
                          "(with --publication --dropout's rate, as published). Off by default: a quarter less time a "
                          "training step; on SoyNAM the headline's PCC within 0.0005, the CNN's alone up to "
                          "0.002 lower "
                          f"[{DEFAULTS.dropout1}]."),
        click.option("--activation", type=click.Choice(ACTIVATIONS),
                     help="Activation of every convolution; the publication's network is linear up to its "
                          "output, so it cannot represent interactions between SNPs. Trains through the Keras "
                          f"layers (slower) [{DEFAULTS.activation}]."),
        click.option("--genotype-basis", type=click.Choice(GENOTYPE_BASES),
                     help="What the first convolutions read for each SNP: 'additive' = missing, centred allele "
                          "dosage, heterozygote, called (the additive-dominance coding; an invertible map of the "
                          "one-hot channels, so the same model class, trained toward additive effects first); "
                          f"'onehot' = the publication's four channels [{DEFAULTS.genotype_basis}]. Saliency is "
                          "taken with respect to the one-hot genotype either way."),
        click.option("--dosage-scale", type=click.FloatRange(0, min_open=True),
                     help="With the additive basis, the dosage coordinate is -S / 0 / S for 0 / 1 / 2 copies: "
                          "S > 1 makes training favour additive over dominance effects (the same model class) "
                          f"[{DEFAULTS.dosage_scale:g}]."),
        click.option("--missing-dosage", type=click.Choice(MISSING_DOSAGES),
                     help="With the additive basis, the dosage a missing call reads as: 'mean' = the SNP's mean "
                          "over the training lines (GBLUP's mean fill, saved with the model, so absent SNPs of "
                          "new lines read the same), the missing coordinate learning what departs from it; "
                          f"'zero' = the heterozygote's [{DEFAULTS.missing_dosage}]."),
        click.option("--l2-dense", type=click.FloatRange(min=0),
                     help="L2 penalty on the output layer's weights; 0 = none, as published "
                          f"[{DEFAULTS.l2_dense:g}]."),
        click.option("--alpha", type=float, help=f"ISRU alpha [{DEFAULTS.alpha}]."),
        click.option("--seed", type=int, help=f"Random seed [{DEFAULTS.seed}]."),
        click.option("--models-per-fold", "--seeds", "n_models", type=click.IntRange(min=0),
                     help="Models per fold (--seeds: the older name), trained with seeds SEED, SEED+1, ...; the "
                          "fold's predictions and saliency are their average (costs that many times the "
                          f"training). 0 = by the fold's training lines: round({AUTO_SEED_LINES} / lines), "
                          f"between 1 and {AUTO_SEEDS_MAX} [{DEFAULTS.n_models}]."),
        click.option("--attribution",
                     help="Attributions each fold also computes, comma-separated: smoothgrad (SmoothGrad), ig "
                          "(integrated gradients from the all-missing genotype), marginal (each SNP's association "
                          "with the fold's predictions over every line: a GWAS of the model, per sd of dosage); "
                          "the publication's saliency is always computed. With marginal, reduce ranks SNPs by "
                          "combined = sqrt(saliency x |marginal|); 'saliency' alone ranks by the saliency "
                          f"[{DEFAULTS.attribution}]."),
        click.option("--standardize/--no-standardize", default=None,
                     help="Standardise the target with the training folds' mean/sd [on]."),
        click.option("--fuse/--no-fuse", "fuse_convolutions", default=None,
                     help="Train through conv1+conv2 composed into one convolution and the two final "
                          "dropouts drawn as one mask: the same model and parameters, fewer FLOPs [on]; "
                          "--no-fuse runs every layer as Keras does."),
        click.option("--bf16/--no-bf16", "bf16_step", default=None,
                     help="Compute the fused training step in bfloat16 (weights, optimiser, prediction "
                          "and saliency stay float32): ~1.7x faster steps on a CPU with AVX512-BF16 or AMX "
                          "(measured); where bfloat16 is emulated it is slower [auto: on where the CPU has "
                          "bfloat16 arithmetic, which metrics.json records as bf16]."),
        click.option("--step-activation-mb", type=click.IntRange(min=1),
                     help=f"Split a training batch into micro-batches (gradients accumulated: the same "
                          f"update) when one activation tensor would exceed this many MiB; bounds memory "
                          f"on wide marker sets [{DEFAULTS.step_activation_mb}]."),
        click.option("--steps-per-epoch", type=click.IntRange(min=0),
                     help=f"Train on at most this many batches per epoch, 0 = all [{DEFAULTS.steps_per_epoch}]; "
                          "for benchmarks and first looks at very large stores."),
        click.option("--cache", type=click.Choice(["auto", "always", "never"]),
                     help=f"Hold the fold's int8 genotypes in memory [{DEFAULTS.cache}: when under --cache-limit-mb]."),
        click.option("--cache-limit-mb", type=click.IntRange(min=0),
                     help=f"Cache limit in MiB [{DEFAULTS.cache_limit_mb}]."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _explicit(config_path=None, publication=False, **overrides) -> bool:
    """Whether the command chose any setting (else a run's own settings apply)."""
    return bool(config_path or publication or any(v is not None for v in overrides.values()))


def _on_sigterm(what: str):
    """SIGTERM (scancel, preemption, a time limit) raises Terminated: exit 143 after saying ``what``."""
    import signal

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum} {what}")
    signal.signal(signal.SIGTERM, handler)


def _build_config(config_path=None, publication=False, **overrides):
    if config_path and publication:
        from hpcsnp.errors import InputError

        raise InputError("--config and --publication both choose the base settings; give one")
    base = Config.load(config_path) if config_path else Config.publication() if publication else Config()
    cfg = base.replace(**overrides)
    for message in cfg.ignored():
        warn(message)
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hpcsnp")
@click.option("-v", "--verbose", count=True,
              help="Debug logging (every module's steps, the fold commands cv starts) and full tracebacks. "
                   "Accepted after the verb too, like -q.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only on stderr (no progress lines).")
def cli(verbose, quiet):
    """Predict phenotypes from SNPs with a residual CNN, explain them with saliency,
    and run cross-validation out of core, locally or as a SLURM array.

    \b
    Typical run:
      hpcsnp ingest height_imp.tsv.gz -o imp.zarr
      hpcsnp ingest height_qa.tsv.gz  -o qa.zarr
      hpcsnp cv imp.zarr qa.zarr --run runs/height      # all folds, then reduce
      hpcsnp query --run runs/height Gm03_1592339
    """
    VERBOSE["level"] = verbose
    setup_logging(verbose, quiet and not verbose)
    from hpcsnp.resources import pin_from_env

    pin_from_env()


@cli.command()
@click.argument("data", type=click.Path(dir_okay=False), required=False)
@click.option("-o", "--out", type=click.Path(), help="Store to write [DATA's name with .zarr, here].")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing store.")
@click.option("--strict", is_flag=True,
              help="Text: NA/nan/. cells are errors.  VCF: multiallelic/indel/non-diploid sites are errors.")
@click.option("--drop-missing-phenotype", is_flag=True, help="Text: drop rows whose phenotype is missing.")
@click.option("--chunk-rows", type=click.IntRange(min=1), help="Samples per genotype chunk [~1 MiB].")
@click.option("--bfile", type=click.Path(), help="PLINK .bed/.bim/.fam prefix (instead of DATA).")
@click.option("--pheno", type=click.Path(exists=True, dir_okay=False),
              help="VCF/PLINK: phenotype table (first column sample id; tab or comma separated).")
@click.option("--pheno-column", help="Trait column of --pheno [its second column].")
@click.option("--drop-unmatched", is_flag=True,
              help="Keep only samples with both genotypes and a phenotype (else a mismatch is an error).")
@click.option("--folds", "n_folds", type=click.IntRange(MIN_FOLDS, MAX_FOLDS),
              help="Assign K folds at random (balanced).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --folds.")
@click.option("--folds-from", type=click.Path(exists=True, dir_okay=False), help="Table of sample id, fold.")
@click.option("--group-column", help="A column of --pheno (or of --groups) naming each sample's group, e.g. its "
                                    "family: stored for within-group accuracy; with --folds, whole groups stay in "
                                    "one fold.")
@click.option("--groups", "groups_file", type=click.Path(exists=True, dir_okay=False),
              help="Table of sample id and group (--group-column, else its second column), stored for "
                   "within-group accuracy in reduce. Text files without an id column have ids 1, 2, ...")
@click.option("--min-maf", type=click.FloatRange(0, 0.5), default=0.0, show_default=True)
@click.option("--max-missing", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Drop SNPs with a larger missing rate.")
@click.option("--max-sample-missing", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Drop samples with a larger missing rate.")
@progress_option
@_handle_errors
def ingest(data, out, force, strict, drop_missing_phenotype, chunk_rows, bfile, pheno, pheno_column,
           drop_unmatched, n_folds, seed, folds_from, group_column, groups_file, min_maf, max_missing,
           max_sample_missing, progress):
    """Validate genotypes and convert them to an int8 Zarr store.

    \b
    Three inputs:
      hpcsnp ingest data.tsv.gz                      fold, phenotype, SNP columns (text, plain or gzip)
      hpcsnp ingest calls.vcf.gz --pheno pheno.tsv   VCF/BCF, with a phenotype table keyed by sample id
      hpcsnp ingest --bfile geno --pheno pheno.tsv   PLINK .bed/.bim/.fam

    Text: per sample the fold (1..K), the phenotype and one code per SNP (0,
    1, 2; -1 or NA missing); an optional first column id/sample/strain holds
    sample ids.  VCF/PLINK: dosage = ALT (A1) allele count; folds from
    --folds K [--group-column], --folds-from, or a 'fold' column of --pheno.
    Prints a summary of what was stored.
    """
    show = _progress_default() if progress is None else progress
    groups = None
    if groups_file:
        from hpcsnp.io.pheno import read_groups

        groups = read_groups(groups_file, group_column)
    is_vcf = data is not None and any(str(data).endswith(s) for s in (".vcf", ".vcf.gz", ".bcf", ".vcf.bgz"))
    if bfile is None and data is not None and str(data).endswith(".bed"):
        bfile = data
    if data is None and bfile is None:
        raise click.UsageError("give DATA (text or VCF) or --bfile PREFIX")
    if out is None:
        name = Path(bfile or data).name
        for suffix in (".gz", ".bgz", ".tsv", ".txt", ".tab", ".vcf", ".bcf", ".bed"):
            name = name[: -len(suffix)] if name.endswith(suffix) else name
        out = name + ".zarr"
    if bfile and data is not None and not str(data).endswith(".bed"):
        raise click.UsageError("give DATA or --bfile PREFIX, not both")
    if is_vcf or bfile:
        _warn_ignored("for VCF/PLINK input", drop_missing_phenotype=drop_missing_phenotype)
        if not n_folds:
            _warn_ignored("without --folds (it seeds the random fold assignment)", seed=seed if seed != 0 else None)
        from hpcsnp.errors import InputError
        from hpcsnp.io.genotype_files import ingest_genotypes
        from hpcsnp.io.plink import PlinkSource
        from hpcsnp.io.vcf import VcfSource

        if pheno is None:
            raise InputError("VCF and PLINK input need --pheno TABLE (sample id, trait, ...)")
        source = PlinkSource(bfile, strict=strict) if bfile else VcfSource(data, strict=strict)
        report = ingest_genotypes(source, out, pheno=pheno, pheno_column=pheno_column,
                                  drop_unmatched=drop_unmatched, folds=n_folds, seed=seed,
                                  folds_file=folds_from, group_column=group_column, min_maf=min_maf,
                                  max_missing=max_missing, max_sample_missing=max_sample_missing,
                                  force=force, progress=show, chunk_rows=chunk_rows, groups=groups)
    else:
        _warn_ignored("for text input (its folds and phenotype are in the file)", pheno=pheno,
                      pheno_column=pheno_column, drop_unmatched=drop_unmatched, folds=n_folds,
                      seed=seed if seed != 0 else None, folds_from=folds_from,
                      group_column=None if groups_file else group_column,
                      min_maf=min_maf or None, max_missing=None if max_missing == 1.0 else max_missing,
                      max_sample_missing=None if max_sample_missing == 1.0 else max_sample_missing)
        from hpcsnp.io.text import ingest_tsv

        report = ingest_tsv(data, out, force=force, strict=strict,
                            drop_missing_phenotype=drop_missing_phenotype, chunk_rows=chunk_rows,
                            progress=show, groups=groups)
    click.echo(report.summary())


@cli.command(cls=SectionedCommand)
@click.argument("store", type=click.Path())
@click.option("--fold", "-i", type=click.IntRange(min=1), required=True, help="Test fold i (validation is i+1).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--dataset", "--name", "name",
              help="Data-set name in the run [the store's name without .zarr]; letters, digits, '.', '_', '-'.")
@click.option("-f", "--force", is_flag=True, help="Redo a finished fold.")
@trait_options
@threads_option
@config_options
@_handle_errors
def train(store, fold, run_dir, name, force, pheno, trait, covar, covar_names, threads, config_path, **hyper):
    """Train, evaluate and explain one fold of one store.

    Writes RUN/<name>/fold_<i>/ (model.keras, predictions.csv, metrics.json,
    saliency.zarr) when the fold is complete.  Checkpoints every epoch: a
    killed fold, rerun, resumes.  A finished fold is skipped unless --force.

    Settings: without any settings option the run's RUN/config.json is used
    (and written from the defaults when the run has none); settings that
    differ from the run's are refused, so one run never mixes settings.
    """
    from hpcsnp.resources import cap_threads

    # SLURM preemption/scancel: say what a rerun will do, exit 143
    _on_sigterm(f"during fold {fold}; the last completed epoch is checkpointed and a rerun (or requeue) "
                "of this command resumes from it")
    n = cap_threads(threads)
    cfg = _build_config(config_path, **hyper) if _explicit(config_path, **hyper) else None
    from hpcsnp.cnn.train import train_fold

    result = train_fold(store, fold, run_dir, cfg, dataset=name, force=force, threads=n, trait=trait, pheno=pheno,
                        covar=covar, covar_names=covar_names)
    m = result.metrics
    click.echo(f"{result.dataset}\tfold {fold}\tpcc {m['pcc']:.4f}\tmse {m['mse']:.4g}\tmae {m['mae']:.4g}"
               f"\t{result.path}")


@cli.command()
@click.argument("store", type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--fold", "-i", "folds", type=click.IntRange(min=1), multiple=True,
              help="Test fold(s) [all].  Repeat for several.")
@click.option("--encoding", type=click.Choice(["dosage", "onehot", "rkhs", "rkhs_local", "both", "all"]),
              default="all", show_default=True,
              help="dosage: GBLUP on centred 0/1/2, missing -> mean; onehot: GBLUP on the CNN's channels, missing "
                   "a category; rkhs: Gaussian-kernel RKHS on the dosage or one-hot distances, distance and "
                   "bandwidth chosen on the validation fold; rkhs_local: the same with the narrowest kernel "
                   "(theta 2), an ensemble member; both: the two GBLUPs; all: all four.")
@click.option("--dataset", "--name", "name",
              help="Data-set name in the run [the store's name without .zarr]; letters, digits, '.', '_', '-'.")
@click.option("-f", "--force", is_flag=True, help="Redo finished folds.")
@trait_options
@solver_option
@scheduler_option
@threads_option
@_handle_errors
def baseline(store, run_dir, folds, encoding, name, force, pheno, trait, covar, covar_names, solver, scheduler,
             threads):
    """Baselines on the same folds: GBLUP/rrBLUP with REML shrinkage, and RKHS.

    Fitted on the training and validation folds, evaluated on the test fold;
    writes RUN/<name>/baseline_<encoding>/fold_<i>/ (predictions.csv,
    val_predictions.csv, metrics.json).  `reduce` reports them beside the CNN.
    """
    from hpcsnp.resources import cap_threads

    cap_threads(threads)
    from hpcsnp.linear.baseline import baseline_fold
    from hpcsnp.models import ENCODINGS, KINDS
    from hpcsnp.resources import dask_context
    from hpcsnp.store import open_store

    encs = {"both": ENCODINGS, "all": KINDS}.get(encoding, (encoding,))
    k = open_store(store).n_folds
    for i in folds or range(1, k + 1):
        with dask_context(scheduler, threads):
            fitted = baseline_fold(store, i, run_dir, encodings=encs, dataset=name, force=force, solver=solver,
                                   trait=trait, pheno=pheno, covar=covar, covar_names=covar_names)
        for m in fitted:
            click.echo(f"{m['dataset']}\tfold {i}\t{m['model']}\tpcc {m['pcc']:.4f}\tmse {m['mse']:.4g}"
                       f"\tmae {m['mae']:.4g}")


@cli.command(cls=SectionedCommand)
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Top SNPs to report.")
@click.option("-f", "--force", is_flag=True, help="Redo finished folds.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also fit the baselines (GBLUP in both encodings, RKHS) on the same folds.")
@solver_option
@threads_option
@click.option("-j", "--jobs", type=click.IntRange(min=1),
              help="Folds trained at a time, sharing the cores [one per core, as memory allows].")
@click.option("--dataset", "--name", "names", multiple=True,
              help="Data-set name of each STORE in the run, once per store in order [each store's file "
                   "name without .zarr]; needed when two stores have the same file name.")
@click.option("--pheno", type=click.Path(exists=True, dir_okay=False),
              help="Phenotype table (first column the stores' sample ids, a column per trait; tab or comma "
                   "separated): with --traits, each trait of each STORE is a data set <store>.<trait> of the run. "
                   "Lines without a value of a trait are left out of its folds.")
@click.option("--traits", "--trait", "traits", multiple=True, metavar="A,B,...",
              help="Columns of --pheno to cross-validate, comma-separated or repeated [the second column].")
@covar_options
@click.option("--dry-run", is_flag=True,
              help="Train nothing: measure what each fold task needs (a short probe of every store with the run's "
                   "settings), print memory and time per task, and check them against --mem/--time or "
                   "--sbatch-args.  Exits 2 when the plan cannot run.  slurm/submit.sh runs this first.")
@click.option("--mem", "mem", metavar="SIZE", help="With --dry-run: the memory of a task, as sbatch's --mem (4G).")
@click.option("--time", "time_limit", metavar="TIME",
              help="With --dry-run: the time limit of a task, as sbatch's --time (HH:MM:SS, D-HH:MM:SS).")
@click.option("--sbatch-args", metavar="TEXT",
              help="With --dry-run: the fold tasks' sbatch options (as HPCSNP_SBATCH_ARGS); their "
                   "--cpus-per-task, --mem and --time are the grant checked.")
@click.option("--plan-out", type=click.Path(dir_okay=False, allow_dash=True), hidden=True,
              help="With --dry-run: write the sized sbatch options and the baseline switch as shell assignments "
                   "(- : on stdout, after the plan).")
@progress_option
@config_options
@_handle_errors
def cv(stores, run_dir, top, force, baseline, solver, threads, jobs, names, pheno, traits, covar, covar_names, dry_run,
       mem, time_limit, sbatch_args, plan_out, progress, config_path, **hyper):
    """Cross-validate: every fold of every STORE in a fresh process, then reduce.

    Typical use: the imputed and the QA store of the same individuals.
    Finished folds are skipped, so rerunning after a crash does only the rest.
    The linear baseline runs on the same folds unless --no-baseline.  The
    settings are saved as RUN/config.json; rerunning with other settings is
    refused unless --force (which redoes every fold); without settings options
    an existing run's settings are used.  Exits 1 when any part
    failed (a fold, or a baseline: the summary is then printed without it).
    """
    from hpcsnp.run.cv import plan_datasets, run_cv
    from hpcsnp.run.reduce import reduce_run
    from hpcsnp.rundir import RunDir

    explicit = _explicit(config_path, **hyper)
    cfg = _build_config(config_path, **hyper)
    run = Path(run_dir)
    from hpcsnp.traits import split_traits

    traits = split_traits(traits) or ([None] if pheno else [])  # None: the table's second column
    plan = plan_datasets(stores, names, run, force=force, traits=traits, pheno=pheno, covar=covar,
                         covar_names=covar_names)
    if dry_run:
        return _dry_run(plan, run, cfg if explicit else None, threads, baseline, solver, mem, time_limit,
                        sbatch_args, plan_out)
    if mem or time_limit or sbatch_args or plan_out:
        raise click.UsageError("--mem, --time and --sbatch-args describe a task for --dry-run")
    _on_sigterm("; every fold process was stopped with it and a rerun resumes each from its checkpoint")
    if baseline:  # before hours of training: a baseline that cannot fit in memory is refused now
        from hpcsnp.linear.baseline import check_memory
        from hpcsnp.linear.scalable import choose_solver

        for store, name in plan:
            chosen, why = choose_solver(store, solver)
            if chosen == "exact":
                check_memory(store)
            if solver == "auto" and chosen == "scalable":
                click.echo(f"{name}: baselines by the scalable solver ({why}); GBLUP only, RKHS skipped", err=True)
    run.mkdir(parents=True, exist_ok=True)
    config = RunDir(run).save_config(cfg if explicit else None, force=force)
    outcome = run_cv(plan, run, config_path=config, threads=threads, jobs=jobs, force=force,
                     verbose=VERBOSE["level"] > 0, progress=_progress_default() if progress is None else progress,
                     baseline=baseline, solver=solver)
    _print_reduce(reduce_run(run, top=top), run)
    outcome.raise_for_failed_baselines()


def _dry_run(plan, run: Path, cfg, threads, baseline, solver, mem, time_limit, sbatch_args, plan_out):
    """cv --dry-run: the preflight's plan, printed; exits 2 when it cannot run."""
    from hpcsnp.atomic import atomic_write_text
    from hpcsnp.config import Config
    from hpcsnp.errors import InputError
    from hpcsnp.resources import granted_cpus
    from hpcsnp.run.preflight import Grant, parse_mem, parse_time, preflight
    from hpcsnp.rundir import RunDir

    grant = Grant.from_sbatch_args(sbatch_args or "")
    if mem:
        grant.mem = parse_mem(mem)
    if time_limit:
        grant.time = parse_time(time_limit)
    cpus = threads or grant.cpus or granted_cpus()
    if cfg is None:  # the run's own settings where it has them, else the defaults
        cfg = Config.from_dict(RunDir(run).config()) if RunDir(run).config() is not None else Config()
    result = preflight(plan, cfg, cpus=cpus, grant=grant, run_dir=run, solver=solver, baseline=baseline,
                       say=lambda m: click.echo(m, err=True))
    for line in result.lines():
        click.echo(line)
    if plan_out == "-":  # after the plan: submit.sh keeps the lines that start with preflight_
        click.echo(result.shell(), nl=False)
    elif plan_out:
        atomic_write_text(Path(plan_out), result.shell())
    if result.refusals:
        raise InputError("the plan cannot run: " + "; ".join(result.refusals))


def _print_reduce(result, run):
    s = result["summary"]
    click.echo(s.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if len(result["paired"]):
        click.echo("\nPaired by fold (PCC): each model minus the better linear baseline, and minus the best "
                   "baseline where that is another:")
        click.echo(result["paired"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    click.echo("")
    click.echo(result["top"].groupby("dataset").head(10).to_string(index=False))
    written = sorted(p.name for p in Path(run).iterdir() if p.is_file() and p.suffix in (".csv", ".png", ".html"))
    click.echo(f"\nthe report: {Path(run) / 'report.html'} (one file: open it in a browser, or send it)")
    click.echo(f"every output in {run}/: {' '.join(n for n in written if n != 'report.html')}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False), required=False)
@run_option
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Top SNPs to report.")
@click.option("--no-plot", is_flag=True, help="Skip the genome plot.")
@scheduler_option
@threads_option
@_handle_errors
def reduce(run_dir, run_opt, top, no_plot, scheduler, threads):
    """Merge all folds of a run: mean saliency, CV summary, top SNPs, plots, and
    RUN/report.html, the whole run on one self-contained page.

    Refuses a run with missing or half-written folds and prints the
    commands that redo them (one `hpcsnp train` per fold, or one sbatch line).
    """
    from hpcsnp.run.reduce import dask_context, reduce_run

    run_dir, extra = _run_and_rest(run_opt, [run_dir])
    if extra:
        raise click.UsageError(f"reduce takes one run; got {run_dir} and {', '.join(extra)}")
    with dask_context(scheduler, threads):
        result = reduce_run(run_dir, top=top, plot=not no_plot)
    _print_reduce(result, run_dir)


@cli.command()
@click.argument("store", type=click.Path())
@click.option("--folds", "folds_only", is_flag=True, help="Print only K, the number of folds (for scripts).")
@_handle_errors
def info(store, folds_only):
    """Describe a store: sizes, folds, missing rate, source and format version."""
    from hpcsnp.store import open_store

    s = open_store(store)
    if folds_only:
        click.echo(s.n_folds)
        return
    a = s.attrs
    sizes = ", ".join(f"{i + 1}:{n}" for i, n in enumerate(a.get("fold_sizes", [])))
    click.echo(f"store        {s.path}\nformat       version {a['hpcsnp_format_version']}, written by "
               f"hpcsnp {a.get('hpcsnp_version')}\nsamples      {s.n_samples:,}\nSNPs         {s.n_variants:,}"
               f"\nfolds        K={s.n_folds}: {sizes}\nmissing      {100 * a.get('missing_rate', 0):.2f} %"
               f"\nchunks       {s.chunk_rows} samples x all SNPs\nalleles      "
               + ("REF/ALT recorded (predict flips swapped alleles)" if s.alleles is not None
                  else "unknown (text input; predict matches SNPs by name and position only)")
               + "\nsource       "
               f"{a.get('source', {}).get('path', '?')} (sha256 {a.get('source', {}).get('sha256', '?')})")


@cli.command()
@click.argument("snps", nargs=-1)
@run_option
@_handle_errors
def query(snps, run_opt):
    """Mean saliency and rank of the named SNPs, per data set (after reduce):
    hpcsnp query --run RUN SNP..."""
    from hpcsnp.run.report import query as do_query

    run_dir, snps = _run_and_rest(run_opt, list(snps))
    if not snps:
        raise click.UsageError("name at least one SNP")
    click.echo(do_query(run_dir, list(snps)).to_csv(sep="\t", index=False, float_format="%.6g"), nl=False)


@cli.command()
@click.argument("store", type=click.Path())
@click.option("--run", "run_dir", type=click.Path(file_okay=False),
              help="Write into RUN/<dataset>/ (where reduce finds it) and reuse the run's cached Gram matrix; "
                   "the data set must have been trained (cv/train) from this very STORE.")
@click.option("--dataset", "--name", "name", help="Data-set name in the run [the store's name without .zarr].")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
              help="Directory for the outputs when there is no --run [STORE's name + _gwas].")
@click.option("--loco/--no-loco", default=False, show_default=True,
              help="Test each chromosome's SNPs against the kinship of the other chromosomes (leave one "
                   "chromosome out), so a SNP is not also in the random effect that competes with it. For "
                   "panels of unrelated lines; in families of inbred lines (NAM, biparental) LD spans whole "
                   "chromosomes and whole chromosomes then test as associated.")
@trait_options
@solver_option
@scheduler_option
@threads_option
@progress_option
@_handle_errors
def gwas(store, run_dir, name, out_dir, loco, pheno, trait, covar, covar_names, solver, scheduler, threads,
         progress):
    """Single-marker mixed-model GWAS (EMMAX/P3D) on every phenotyped line.

    REML variance components once (the kinship of the baseline), then one
    generalised least-squares t-test per SNP (with --loco, against the
    kinship of the other chromosomes). Writes gwas.tsv (PLINK 2's --glm
    columns: #CHROM POS ID REF ALT A1 A1_FREQ TEST OBS_CT BETA SE T_STAT P,
    BETA per copy of the effect allele A1, plus Q_BH, the Benjamini-Hochberg
    q), gwas.json (genomic inflation lambda,
    Bonferroni and Benjamini-Hochberg thresholds, h2), gwas_manhattan.png and
    gwas_qq.png.
    """
    from hpcsnp.resources import cap_threads

    cap_threads(threads)
    from hpcsnp.atomic import check_writable
    from hpcsnp.linear.gwas import check_testable, gwas_store, write_gwas
    from hpcsnp.rundir import RunDir
    from hpcsnp.store import open_store

    if run_dir and out_dir:
        raise click.UsageError("give --run RUN (outputs in RUN/<dataset>/, where reduce finds them) or -o DIR, "
                               "not both")
    if name and not run_dir:
        raise click.UsageError("--name chooses a data set of --run; without --run use -o DIR")
    from hpcsnp.linear.scalable import choose_solver
    from hpcsnp.resources import dask_context

    s = open_store(store, trait=trait, pheno=pheno, covar=covar, covar_names=covar_names)
    check_testable(s.phenotype[s.phenotyped], s.path)
    solver, why = choose_solver(s, solver)
    gram = None
    if run_dir:
        from hpcsnp.linear.baseline import cached_gram

        run = RunDir(run_dir)
        ds = run.trained_dataset(s, name)  # never binds the data set to another store
        check_writable(run.dataset_dir(ds), directory=True)
        if solver == "exact" and len(s.phenotyped) == s.n_samples:  # else the Gram matrix of the tested lines
            G, width, _ = cached_gram(s, "dosage", run.baseline_cache(ds, "dosage"))
            gram = (G, width)
        where, label = run.dataset_dir(ds), ds
    else:
        where, label = Path(out_dir or f"{s.name}_gwas"), s.name
        check_writable(where, directory=True)
    from tqdm import tqdm

    with tqdm(total=s.n_variants, desc=f"gwas {label}", unit=" SNPs", file=sys.stderr,
              disable=not (_progress_default() if progress is None else progress)) as bar:
        with dask_context(scheduler, threads):
            r = gwas_store(s, gram=gram, loco=loco, progress=bar.update, solver=solver)
    paths = write_gwas(r, where, label)
    m = r.summary
    click.echo(f"{solver} solver ({why})")
    click.echo(f"{m['snps_tested']:,} SNPs x {m['n']:,} lines in {m['seconds']:.1f}s"
               f"{' (leave one chromosome out)' if m['loco'] else ''}: lambda {m['lambda_gc']:.3f}, "
               f"h2 {m['h2_reml']:.3f}; {m['significant_bonferroni']} below Bonferroni "
               f"{m['bonferroni_p']:.2e}, {m['significant_bh_5pct']} at BH 5 %")
    click.echo(r.table.nsmallest(10, "p")[["snp", "chrom", "pos", "maf", "beta", "se", "p"]].to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    click.echo("outputs: " + " ".join(map(str, paths)))


@cli.command()
@click.argument("run_dir", type=click.Path(), required=False)
@click.argument("genotypes", type=click.Path(), required=False)
@run_option
@click.option("--bfile", type=click.Path(), help="PLINK .bed/.bim/.fam prefix of the new lines (instead of GENOTYPES).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), required=True,
              help="Predictions CSV to write (with OUT's stem + .alignment.json beside it).")
@click.option("--dataset", "--name", "dataset",
              help="Data set of the run to predict with (needed when the run holds several).")
@click.option("--min-overlap", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Refuse when fewer than this share of the training SNPs are present in GENOTYPES.")
@click.option("--explain", is_flag=True,
              help="Also write OUT's stem + .explain.csv: each line's top 10 SNPs by saliency of the CNN mean.")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Refit the run's GBLUP baselines on all phenotyped lines (cached in the run) and report them; "
                   "the headline is then the ensemble.")
@click.option("--fold", "-i", type=click.IntRange(min=1),
              help="Use only this fold's CNN (a check: it reproduces the fold's own test predictions).")
@click.option("--level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True,
              help="Coverage of the prediction interval (lower, upper), calibrated on the run's out-of-fold "
                   "residuals.")
@click.option("--rank-by", type=click.Choice(["high", "low"]), default="high", show_default=True,
              help="Rank 1 is the highest prediction, or the lowest (e.g. days to maturity, disease score).")
@click.option("--pev", is_flag=True,
              help="Also the prediction error variance and reliability of each GBLUP column (rrBLUP's PEV; "
                   "<column>_pev, <column>_reliability), from the exact path's kernel: an eigendecomposition of "
                   "the n x n kernel per encoding.")
@click.option("-f", "--force", is_flag=True, help="Overwrite OUT.")
@solver_option
@threads_option
@progress_option
@_handle_errors
def predict(run_dir, genotypes, run_opt, bfile, out, dataset, min_overlap, explain, baseline, fold, level, rank_by,
            pev, solver, force, threads, progress):
    """Predict new, unphenotyped lines with a finished run.

    GENOTYPES: a tab-separated table (sample ids in column 1, one column per SNP
    in any order; `fold` and `phenotype` columns are ignored), a VCF/VCF.gz, or an
    hpcsnp store; or --bfile PREFIX for PLINK.  SNPs are matched with the training
    store by name, else by chromosome + position; swapped alleles are flipped (when
    both sides know them); training SNPs the file lacks are read as missing.  The
    alignment is reported on stderr and in OUT's stem + .alignment.json.

    Every fold's CNN predicts every line (cnn_mean, cnn_sd); each GBLUP baseline of
    the run is refitted on all phenotyped lines (gblup_dosage, gblup_onehot); the
    headline `prediction` is their ensemble with the weights the run chose on its
    validation folds, averaged over folds (the CNN mean when the run has no
    baseline), with an interval (lower, upper) that covers a new line's
    phenotype with probability --level when the line is drawn like the run's
    lines (split-conformal, from the run's out-of-fold residuals).  `rank` 1 is
    the highest prediction (--rank-by low: the lowest).  Everything is a
    predicted phenotype, in its units (not a breeding value: the CNN's
    predictions include non-additive effects).
    """
    from hpcsnp.run.predict import predict_run

    run_dir, rest = _run_and_rest(run_opt, [run_dir, genotypes])
    if len(rest) > 1:
        raise click.UsageError(f"predict reads one genotype file; got {', '.join(rest)}")
    genotypes = rest[0] if rest else None
    _on_sigterm("; nothing was written (a rerun starts again)")  # the partial files are removed on the way out
    show = _progress_default() if progress is None else progress
    r = predict_run(run_dir, genotypes, out=out, bfile=bfile, dataset=dataset, min_overlap=min_overlap,
                    explain=explain, fold=fold, baseline=baseline, threads=threads, progress=show, force=force,
                    level=level, rank_by=rank_by, solver=solver, pev=pev)
    weights = ", ".join(f"{m} {w:.2f}" for m, w in r.weights.items()) if r.weights else "none (CNN mean)"
    click.echo(f"predicted {r.n_lines:,} lines in {r.seconds:.1f}s -> {r.out}")
    click.echo(f"alignment  {r.alignment['matched']:,} of {r.alignment['training_snps']:,} training SNPs present "
               f"({100 * r.alignment['overlap']:.1f} %), {r.alignment['flipped']:,} flipped, "
               f"{r.alignment['extra']:,} extra ignored -> {r.report_path}")
    click.echo(f"headline   ensemble weights: {weights}")
    click.echo(f"interval   prediction +- {r.interval['half_width']:.4g} covers {100 * level:g} % of lines like the "
               f"run's (from {r.interval['out_of_fold_residuals']:,} out-of-fold residuals)")
    if r.explain_path:
        click.echo(f"explained  top 10 SNPs per line -> {r.explain_path}")
    top = r.table.nsmallest(min(5, len(r.table)), "rank")[["rank", "sample_id", "prediction", "lower", "upper",
                                                           "cnn_mean", "cnn_sd"]]
    click.echo("\n" + top.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


@cli.command()
@click.argument("out_arg", metavar="[OUT]", type=click.Path(dir_okay=False), required=False)
@click.option("-o", "--out", type=click.Path(), help="Where to write: the TSV (with --formats a directory; with "
                                                      "--plink the prefix of .bed/.bim/.fam). Also positional.")
@click.option("--samples", type=click.IntRange(min=6), default=600, show_default=True)
@click.option("--snps", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--causal", type=click.IntRange(min=1), default=5, show_default=True, help="Planted causal SNPs.")
@click.option("--folds", type=click.IntRange(MIN_FOLDS, MAX_FOLDS), default=5, show_default=True)
@click.option("--missing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction of calls set missing (-1) at random.")
@click.option("--heritability", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--formats", is_flag=True,
              help="Treat OUT as a directory and write the same data as TSV, VCF and PLINK + pheno.tsv.")
@click.option("--plink", is_flag=True,
              help="Write PLINK OUT.bed/.bim/.fam + OUT.pheno.tsv of inbred lines in families with LD blocks, "
                   "one SNP at a time in bounded memory (for data at scale: 100,000 x 50,000 in minutes).")
@click.option("--families", type=click.IntRange(min=1), default=40, show_default=True,
              help="With --plink: founders crossed to one common parent, as in a NAM design.")
@progress_option
@_handle_errors
def simulate(out_arg, out, samples, snps, causal, folds, missing, heritability, seed, formats, plink, families,
             progress):
    """Write a simulated data set with planted causal SNPs (-o OUT, plus OUT.causal.tsv).

    Without options, a TSV of independent SNPs; --plink writes families of inbred lines with
    LD blocks as PLINK, for `hpcsnp ingest --bfile OUT --pheno OUT.pheno.tsv`.
    """
    out = _out(out, out_arg)
    from hpcsnp.atomic import check_writable
    from hpcsnp.io.simulate import simulate as sim

    if plink:
        from tqdm import tqdm

        from hpcsnp.io.simulate import simulate_plink

        check_writable(out + ".bed")
        with tqdm(total=snps, desc="simulate", unit=" SNPs", file=sys.stderr,
                  disable=not (_progress_default() if progress is None else progress)) as bar:
            truth = simulate_plink(out, samples=samples, snps=snps, causal=causal, families=families, folds=folds,
                                   missing=missing, heritability=heritability, seed=seed, progress=bar.update)
        click.echo(f"wrote {out}.bed/.bim/.fam and {out}.pheno.tsv: {samples:,} lines in {families} families x "
                   f"{snps:,} SNPs, {folds} folds; causal SNPs in {out}.causal.tsv")
        return
    check_writable(out, directory=formats)

    if formats:
        from hpcsnp.io.simulate import simulate_formats

        paths = simulate_formats(out, samples=samples, snps=snps, folds=folds, missing=missing, seed=seed)
        click.echo("\n".join(f"{k}\t{v}" for k, v in paths.items()))
        return
    truth = sim(out, samples=samples, snps=snps, causal=causal, folds=folds, missing=missing,
                heritability=heritability, seed=seed)
    click.echo(f"wrote {out}: {samples} samples x {snps} SNPs, {folds} folds; causal SNPs "
               f"({out}.causal.tsv): {', '.join(truth.causal)}")


DEMO_FILES = frozenset({"sim.tsv.gz", "sim.tsv.gz.causal.tsv", "sim.zarr", "run"})


def check_demo_dir(out: Path) -> None:
    """The demo rewrites its folder: refuse one that holds anything an earlier demo did not write."""
    from hpcsnp.atomic import check_writable
    from hpcsnp.errors import InputError

    check_writable(out, directory=True)
    other = sorted(p.name for p in out.iterdir() if p.name not in DEMO_FILES
                   and ".tmp-" not in p.name) if out.is_dir() else []  # a killed demo's temporaries are its own
    if other:
        raise InputError(f"{out} holds files the demo did not write ({', '.join(other[:3])}"
                         f"{', ...' if len(other) > 3 else ''}); the demo rewrites its folder: give a new or "
                         "empty one")




@cli.command()
@click.argument("out_arg", metavar="[OUT_DIR]", type=click.Path(file_okay=False), required=False)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
              help="The directory every output goes to [quickstart]. Also positional.")
@click.option("--samples", type=click.IntRange(min=30), default=1000, show_default=True)
@click.option("--snps", type=click.IntRange(min=10), default=500, show_default=True)
@threads_option
@progress_option
@_handle_errors
def demo(out_arg, out_dir, samples, snps, threads, progress):
    """The whole job on simulated data, in about five minutes on two cores.

    Simulates OUT_DIR/sim.tsv.gz with 5 planted causal SNPs and 10 % missing
    calls, ingests it, cross-validates 5 folds with the shipped defaults (with
    600 training lines a fold averages five networks) and the baselines on the
    same folds, reduces, and reports where the planted SNPs rank.  Every
    output is left in OUT_DIR.
    """
    from hpcsnp.config import Config
    from hpcsnp.io.simulate import simulate as sim
    from hpcsnp.io.text import ingest_tsv
    from hpcsnp.run.cv import plan_datasets, run_cv
    from hpcsnp.run.reduce import reduce_run
    from hpcsnp.run.report import query as do_query
    from hpcsnp.rundir import RunDir

    out = Path(_out(out_dir, out_arg, "quickstart"))
    check_demo_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    show = _progress_default() if progress is None else progress
    truth = sim(out / "sim.tsv.gz", samples=samples, snps=snps, causal=5, folds=5, missing=0.1, seed=1)
    click.echo(f"simulated {out / 'sim.tsv.gz'}: {samples} samples x {snps} SNPs, planted: "
               f"{', '.join(truth.causal)}", err=True)
    report = ingest_tsv(out / "sim.tsv.gz", out / "sim.zarr", force=True, progress=show)
    click.echo(report.summary() + "\n")
    cfg = Config()  # the shipped defaults: the demo shows what `hpcsnp cv` does
    run = out / "run"
    run.mkdir(exist_ok=True)
    # the store was written afresh: a run left by an earlier demo is redone, not mixed in
    config = RunDir(run).save_config(cfg, force=True)
    outcome = run_cv(plan_datasets([out / "sim.zarr"], run_dir=run, force=True), run, config_path=config,
                     threads=threads, progress=show, baseline=True, force=True)
    result = reduce_run(run, top=20)
    _print_reduce(result, run)
    q = do_query(run, truth.causal)
    scores = result["saliency"].set_index("snp")
    if "combined_rank" in scores:  # the default attributions: the ranking reduce leads with
        q = q.assign(combined=scores.loc[q["snp"], "combined"].to_numpy(),
                     combined_rank=scores.loc[q["snp"], "combined_rank"].to_numpy())
        click.echo("\nplanted causal SNPs, rank by the combined score and by mean saliency:")
        click.echo(q[["snp", "combined", "combined_rank", "saliency", "rank", "of"]].to_string(index=False))
    else:
        click.echo("\nplanted causal SNPs, rank by mean saliency:")
        click.echo(q[["snp", "saliency", "rank", "of"]].to_string(index=False))
    outcome.raise_for_failed_baselines()


def main(argv=None):
    import contextlib
    import faulthandler
    import signal

    from hpcsnp.resources import die_with_parent, exec_with_huge_pages

    if argv is None:  # this process's own command line: start it again with huge pages where they apply
        exec_with_huge_pages()
    # a crash in a native library (BLAS, LAPACK, TensorFlow) writes the Python stack to stderr, the
    # fold's log: which call died, where a bare "Segmentation fault" says nothing
    with contextlib.suppress(AttributeError, ValueError, OSError):  # a stderr without a file descriptor
        faulthandler.enable()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `hpcsnp ... | head` ends quietly
    args = sys.argv[1:] if argv is None else list(argv)
    die_with_parent()  # a fold process of `hpcsnp cv` ends when cv does
    cli.main(args=_hoisted_flags(_renamed_flags(args)), prog_name="hpcsnp")


LOGGING_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def _hoisted_flags(args: list[str]) -> list[str]:
    """-v / -vv / --verbose and -q / --quiet given after the verb, moved before it, where
    the group reads them: every verb takes them in either place.

    >>> _hoisted_flags(["predict", "run", "-vv", "-o", "x.csv", "--", "-q"])
    ['-vv', 'predict', 'run', '-o', 'x.csv', '--', '-q']
    """
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in LOGGING_FLAGS or (a.startswith("-v") and set(a[1:]) == {"v"})]
    if not flags:
        return args
    rest = [a for a in args[:end] if a not in flags]
    return flags + rest + args[end:]


def _renamed_flags(args: list[str]) -> list[str]:
    """Flags of earlier versions, still accepted with a warning: -k N (now -i N / --fold N;
    k counts the folds, i names one).

    >>> _renamed_flags(["train", "s.zarr", "-k", "2"])
    ['train', 's.zarr', '--fold', '2']
    """
    out = []
    for a in args:
        if a == "--":
            return out + args[len(out):]
        if a == "-k" or (a.startswith("-k") and a[2:].isdigit()):
            click.echo("hpcsnp: warning: -k is now -i / --fold (the test fold's number); -k will go", err=True)
            out += ["--fold", *([a[2:]] if a[2:] else [])]
        else:
            out.append(a)
    return out
