#!/usr/bin/env bash
#SBATCH --job-name=hpcsnp-reduce
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
#
# Merge all folds of a run (Dask): mean saliency per SNP, CV summary, top SNPs, plot.
# Usage, after the fold array JOBID:
#     sbatch --dependency=afterok:JOBID slurm/reduce.sh RUN_DIR
# It refuses a run with missing folds and prints the sbatch line that redoes them.
# Output goes to RUN_DIR/logs/reduce_<jobid>.log.
#
# Environment:
#   HPCSNP_TOP          top SNPs to report [20]
#   HPCSNP_REDUCE_ARGS  extra `hpcsnp reduce` options, e.g. "--scheduler tcp://host:8786"
#   HPCSNP_IMAGE, HPCSNP_CONTAINER, HPCSNP_BIND, HPCSNP   as in cv_array.sh
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: sbatch --dependency=afterok:JOBID slurm/reduce.sh RUN_DIR" >&2
  exit 2
fi
run_dir="$1"
mkdir -p "$run_dir/logs"
log="$run_dir/logs/reduce_${SLURM_JOB_ID:-local}.log"
boot="$(readlink -f /proc/$$/fd/1 2>/dev/null || true)"
if [ "$boot" != "$(readlink -f "$log")" ]; then
  exec >>"$log" 2>&1
  case "$boot" in *.out) trap '[ -f "$boot" ] && [ ! -s "$boot" ] && rm -f "$boot"' EXIT ;; esac
fi

# (kept in each script: sbatch runs a spooled copy, which cannot source a sibling file)
if [ -n "${HPCSNP_IMAGE:-}" ]; then
  runtime="${HPCSNP_CONTAINER:-$(command -v apptainer || command -v singularity || echo apptainer)}"
  hpcsnp=("$runtime" exec --bind "$(readlink -f "$run_dir")${HPCSNP_BIND:+,$HPCSNP_BIND}" "$HPCSNP_IMAGE" hpcsnp)
else
  hpcsnp=("${HPCSNP:-hpcsnp}")
fi

echo "== hpcsnp-reduce job ${SLURM_JOB_ID:-local} on $(hostname) at $(date -Is)"
# shellcheck disable=SC2086
"${hpcsnp[@]}" reduce "$run_dir" --top "${HPCSNP_TOP:-20}" ${HPCSNP_REDUCE_ARGS:-}
