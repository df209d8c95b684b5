#!/usr/bin/env bash
#SBATCH --job-name=hpcsnp-cv
#SBATCH --array=1-10
#SBATCH --cpus-per-task=2
#SBATCH --mem=2G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
#
# One cross-validation fold per array task:  task i runs, for each STORE,
#     hpcsnp train STORE --fold i --run RUN_DIR
# Usage:
#     sbatch [--array=1-K] slurm/cv_array.sh RUN_DIR STORE [STORE ...]
#     (slurm/submit.sh RUN_DIR STORE ... submits this and the dependent reduce)
#
# The #SBATCH lines above are defaults; override them on the sbatch command line
# (--array=1-5 for K=5, --cpus-per-task, --mem, --time, --partition, ...).
# Threads: hpcsnp caps TensorFlow, OMP, MKL, OpenBLAS and tf.data to
# SLURM_CPUS_PER_TASK.  Output goes to RUN_DIR/logs/<jobid>_<task>.log (the
# %x-%A_%a.out file in the submit directory is removed when it stays empty).
#
# Nothing is lost when a task dies: a fold checkpoints every epoch and resumes
# when the task is requeued (--requeue; `scontrol requeue`) or resubmitted; a
# finished fold is skipped, so resubmitting the whole array redoes only what is
# missing.  Set HPCSNP_TRAIN_ARGS=--force to redo finished folds.
# A task about to reach its time limit requeues itself: SLURM signals the script
# 300 s before the limit (--signal=B:USR1@300; SLURM may send it up to a minute
# early), the script requeues the task, the fold stops after saving its state and
# the requeued task resumes from the last finished epoch.
# The baseline runs first and is optional: if it fails (e.g. it refuses a store
# too large for its memory) the task says so and trains the fold anyway; the
# task's exit status is the training's, so the afterok reduce still runs, and
# reduce names the baselines it did not find.
#
# Environment:
#   HPCSNP_TRAIN_ARGS  extra `hpcsnp train` options, e.g. "--config run.json" or "--epochs 200"
#   HPCSNP_PHENO       a phenotype table (first column the stores' sample ids, a column per trait):
#                      its trait replaces each store's phenotype (as `hpcsnp cv --pheno`)
#   HPCSNP_TRAITS      with HPCSNP_PHENO: the traits to train, comma-separated [its second column];
#                      each is a data set <store>.<trait> of the run
#   HPCSNP_COVAR       a covariate table (first column the sample ids): its columns are fixed effects
#                      of every model and the GWAS (as `hpcsnp cv --covar`)
#   HPCSNP_COVAR_NAMES with HPCSNP_COVAR: its columns to use, comma-separated (COLUMN:cat for
#                      categories given as numbers) [every column]
#   HPCSNP_BASELINE    1 (default): also fit the linear baseline (GBLUP) on the same fold; 0: skip
#   HPCSNP_SOLVER      the baseline's solver: auto (default: exact where its n x n matrices fit in
#                      the task's --mem, else scalable), exact or scalable
#   HPCSNP_IMAGE       run hpcsnp inside this Apptainer/Singularity image (.sif)
#   HPCSNP_CONTAINER   apptainer or singularity [the first one found]
#   HPCSNP_BIND        extra bind paths for the container, e.g. /scratch,/projects
#   HPCSNP             the hpcsnp command when not in a container [hpcsnp]
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: sbatch slurm/cv_array.sh RUN_DIR STORE [STORE ...]" >&2
  exit 2
fi
run_dir="$1"; shift
task="${SLURM_ARRAY_TASK_ID:?this script runs as a SLURM array task (sbatch --array=1-K)}"
job="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}"

mkdir -p "$run_dir/logs"
log="$run_dir/logs/${job}_${task}.log"
boot="$(readlink -f /proc/$$/fd/1 2>/dev/null || true)"
if [ "$boot" != "$(readlink -f "$log")" ]; then
  exec >>"$log" 2>&1
  case "$boot" in *.out) trap '[ -f "$boot" ] && [ ! -s "$boot" ] && rm -f "$boot"' EXIT ;; esac
fi

# The container wrapper lives beside this script.  sbatch runs a spooled copy of the
# script, so look for it where the submitted original lives (scontrol's Command=), in
# HPCSNP_SLURM_DIR (submit.sh sets it), or next to this file (run with bash directly).
for dir in "${HPCSNP_SLURM_DIR:-}" \
           "$(dirname "$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/.*Command=\([^ ]*\).*/\1/p' | head -1)")" \
           "$(dirname "${BASH_SOURCE[0]}")"; do
  if [ -n "$dir" ] && [ -f "$dir/hpcsnp-run.sh" ]; then
    # shellcheck source=slurm/hpcsnp-run.sh
    . "$dir/hpcsnp-run.sh"
    break
  fi
done
command -v hpcsnp_command >/dev/null || { echo "hpcsnp: slurm/hpcsnp-run.sh not found (set HPCSNP_SLURM_DIR)" >&2; exit 2; }
hpcsnp_command "$run_dir" "$@" ${HPCSNP_PHENO:+"$HPCSNP_PHENO"} ${HPCSNP_COVAR:+"$HPCSNP_COVAR"}

echo "== hpcsnp-cv task $task of job $job on $(hostname) at $(date -Is); restart ${SLURM_RESTART_COUNT:-0}; cpus ${SLURM_CPUS_PER_TASK:-?}"

requeued=0
# shellcheck disable=SC2329  # invoked by the USR1 trap
requeue_before_the_limit() {
  requeued=1
  echo "== time limit near: requeueing task $task (job ${SLURM_JOB_ID:-?}); it resumes from its last finished epoch"
  scontrol requeue "${SLURM_JOB_ID:?}" || echo "== scontrol requeue failed: resubmit the task to resume it"
}
trap requeue_before_the_limit USR1

# run one hpcsnp command in the background, so that the USR1 trap runs while it works
run_step() {
  "$@" &
  local pid=$!
  wait "$pid"
  local rc=$?
  while kill -0 "$pid" 2>/dev/null; do  # the trap interrupted wait: the step is still stopping
    wait "$pid"
    rc=$?
  done
  return "$rc"
}

# the traits of HPCSNP_PHENO to train ("" : the table's second column); none without a table
traits=("")
if [ -n "${HPCSNP_PHENO:-}" ] && [ -n "${HPCSNP_TRAITS:-}" ]; then
  traits=()
  IFS=, read -r -a fields <<<"$HPCSNP_TRAITS"
  for t in "${fields[@]}"; do  # as `cv --traits`: spaces around a name and empty fields dropped
    t="${t#"${t%%[![:space:]]*}"}"; t="${t%"${t##*[![:space:]]}"}"
    [ -z "$t" ] || traits+=("$t")
  done
  [ "${#traits[@]}" -gt 0 ] || traits=("")
fi

status=0
for store in "$@"; do
  for trait in "${traits[@]}"; do
    what=("$store")
    [ -z "${HPCSNP_PHENO:-}" ] || what+=(--pheno "$HPCSNP_PHENO")
    [ -z "$trait" ] || what+=(--trait "$trait")
    [ -z "${HPCSNP_COVAR:-}" ] || what+=(--covar "$HPCSNP_COVAR")
    [ -z "${HPCSNP_COVAR:-}" ] || for c in ${HPCSNP_COVAR_NAMES:+${HPCSNP_COVAR_NAMES//,/ }}; do what+=(--covar-name "$c"); done
    if [ "${HPCSNP_BASELINE:-1}" != 0 ] && [ "$requeued" = 0 ]; then
      run_step "${hpcsnp[@]}" baseline "${what[@]}" --fold "$task" --run "$run_dir" || \
        echo "== baseline of ${what[*]} fold $task failed (exit $?): training goes on, the reduce reports the run without it"
    fi
    [ "$requeued" = 0 ] || break 2
    # word splitting of HPCSNP_TRAIN_ARGS is intended: it holds several options
    # shellcheck disable=SC2086
    run_step "${hpcsnp[@]}" train "${what[@]}" --fold "$task" --run "$run_dir" ${HPCSNP_TRAIN_ARGS:-} || status=$?
    [ "$requeued" = 0 ] || break 2
  done
done
echo "== task $task done at $(date -Is), exit $status"
exit "$status"
