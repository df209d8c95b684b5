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
# reduce reads the run and checks each data set's store (and its trait and covariate tables):
# bind their directories too
mapfile -t stores < <(sed -n 's/^ *"\(store\|pheno\|covar\)": "\(.*\)",\{0,1\}$/\2/p' "$run_dir"/*/dataset.json 2>/dev/null)
hpcsnp_command "$run_dir" "${stores[@]}"

echo "== hpcsnp-reduce job ${SLURM_JOB_ID:-local} on $(hostname) at $(date -Is)"
# shellcheck disable=SC2086
"${hpcsnp[@]}" reduce --run "$run_dir" --top "${HPCSNP_TOP:-20}" ${HPCSNP_REDUCE_ARGS:-}
