#!/usr/bin/env bash
# submit.sh -- submit a whole cross-validation to SLURM: the fold array, then the
# reduce with an afterok dependency.  Prints the two job ids.
# Usage:
#     slurm/submit.sh RUN_DIR STORE [STORE ...]
# All stores must have the same number of folds K (the array is 1-K).  Extra sbatch
# options for the fold tasks: HPCSNP_SBATCH_ARGS="--cpus-per-task=4 --mem=3G --partition=long".
# Other HPCSNP_* variables are passed through to the jobs (see cv_array.sh), e.g.
# HPCSNP_PHENO=traits.tsv HPCSNP_TRAITS=height,yield trains each trait of a table.
#
# Before anything is submitted, a preflight (`hpcsnp cv --dry-run`, here, in about a
# minute) measures what each task will need with the run's settings (HPCSNP_TRAIN_ARGS) and
# the task's cores: it refuses a --mem too small for the CNN or a --time too short for one
# epoch, switches off baselines that cannot fit (memory, or one task's time), and sizes
# --mem and --time where HPCSNP_SBATCH_ARGS does not set them.  The plan is printed and
# kept in RUN_DIR/logs/preflight.txt.  HPCSNP_PREFLIGHT=0 skips it (cv_array.sh's
# #SBATCH defaults then apply).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: $0 RUN_DIR STORE [STORE ...]" >&2
  exit 2
fi
run_dir="$1"; shift

# shellcheck source=slurm/hpcsnp-run.sh
. "$here/hpcsnp-run.sh"
hpcsnp_command "$@" ${HPCSNP_PHENO:+"$HPCSNP_PHENO"} ${HPCSNP_COVAR:+"$HPCSNP_COVAR"}
export HPCSNP_SLURM_DIR="$here"  # where the jobs find hpcsnp-run.sh (sbatch runs spooled copies)

k=""
for s in "$@"; do
  ks="$("${hpcsnp[@]}" info --folds "$s")"
  if [ -n "$k" ] && [ "$ks" != "$k" ]; then
    echo "submit.sh: $s has K=$ks folds, an earlier store has K=$k; submit them separately" >&2
    exit 2
  fi
  k="$ks"
done
mkdir -p "$run_dir/logs"
sized=""
if [ "${HPCSNP_PREFLIGHT:-1}" != 0 ]; then
  hpcsnp_command "$run_dir" "$@" ${HPCSNP_PHENO:+"$HPCSNP_PHENO"} ${HPCSNP_COVAR:+"$HPCSNP_COVAR"}
  no_baseline=""; [ "${HPCSNP_BASELINE:-1}" != 0 ] || no_baseline="--no-baseline"
  traits=()
  [ -z "${HPCSNP_PHENO:-}" ] || traits+=(--pheno "$HPCSNP_PHENO")
  [ -z "${HPCSNP_PHENO:-}" ] || [ -z "${HPCSNP_TRAITS:-}" ] || traits+=(--traits "$HPCSNP_TRAITS")
  [ -z "${HPCSNP_COVAR:-}" ] || traits+=(--covar "$HPCSNP_COVAR")
  [ -z "${HPCSNP_COVAR:-}" ] || for c in ${HPCSNP_COVAR_NAMES:+${HPCSNP_COVAR_NAMES//,/ }}; do traits+=(--covar-name "$c"); done
  # cv_array.sh's own --cpus-per-task unless HPCSNP_SBATCH_ARGS sets it; word splitting of
  # HPCSNP_TRAIN_ARGS is intended (the run's settings, as the tasks will train with them).
  # The plan comes back on stdout (a container need not be able to write the run directory),
  # followed by its decisions as shell assignments (preflight_sbatch=..., preflight_baseline=...).
  ok=1
  # shellcheck disable=SC2086
  plan="$("${hpcsnp[@]}" cv "$@" ${traits[@]+"${traits[@]}"} --run "$run_dir" --dry-run $no_baseline --solver "${HPCSNP_SOLVER:-auto}" \
       --sbatch-args "--cpus-per-task=2 ${HPCSNP_SBATCH_ARGS:-}" --plan-out - ${HPCSNP_TRAIN_ARGS:-})" || ok=0
  grep -v '^preflight_' <<<"$plan" | tee "$run_dir/logs/preflight.txt"
  if [ "$ok" = 0 ]; then
    echo "submit.sh: nothing submitted (the preflight refused the plan or failed, see above; HPCSNP_PREFLIGHT=0 skips it)" >&2
    exit 2
  fi
  eval "$(grep '^preflight_' <<<"$plan")"
  sized="${preflight_sbatch:-}"
  if [ "${preflight_baseline:-1}" = 0 ]; then export HPCSNP_BASELINE=0; fi
fi
# shellcheck disable=SC2086
array_id="$(sbatch --parsable --array="1-$k" --output="$run_dir/logs/%A_%a.log" \
  $sized ${HPCSNP_SBATCH_ARGS:-} "$here/cv_array.sh" "$run_dir" "$@")"
array_id="${array_id%%;*}"
reduce_id="$(sbatch --parsable --dependency="afterok:$array_id" \
  --output="$run_dir/logs/reduce_%j.log" "$here/reduce.sh" "$run_dir")"
reduce_id="${reduce_id%%;*}"
echo "folds:  job $array_id (array 1-$k; logs in $run_dir/logs/${array_id}_<fold>.log)"
echo "reduce: job $reduce_id (starts when every fold succeeded)"
echo "$array_id $reduce_id" > "$run_dir/logs/jobs.txt"
