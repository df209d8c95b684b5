#!/usr/bin/env bash
# submit.sh -- submit a whole cross-validation to SLURM: the fold array, then the
# reduce with an afterok dependency.  Prints the two job ids.
# Usage:
#     slurm/submit.sh RUN_DIR STORE [STORE ...]
# All stores must have the same number of folds K (the array is 1-K).  Extra sbatch
# options for the fold tasks: HPCSNP_SBATCH_ARGS="--cpus-per-task=4 --mem=3G --partition=long".
# Other HPCSNP_* variables are passed through to the jobs (see cv_array.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: $0 RUN_DIR STORE [STORE ...]" >&2
  exit 2
fi
run_dir="$1"; shift

# shellcheck source=slurm/hpcsnp-run.sh
. "$here/hpcsnp-run.sh"
hpcsnp_command "$@"
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
# shellcheck disable=SC2086
array_id="$(sbatch --parsable --array="1-$k" --output="$run_dir/logs/%A_%a.log" \
  ${HPCSNP_SBATCH_ARGS:-} "$here/cv_array.sh" "$run_dir" "$@")"
array_id="${array_id%%;*}"
reduce_id="$(sbatch --parsable --dependency="afterok:$array_id" \
  --output="$run_dir/logs/reduce_%j.log" "$here/reduce.sh" "$run_dir")"
reduce_id="${reduce_id%%;*}"
echo "folds:  job $array_id (array 1-$k; logs in $run_dir/logs/${array_id}_<fold>.log)"
echo "reduce: job $reduce_id (starts when every fold succeeded)"
echo "$array_id $reduce_id" > "$run_dir/logs/jobs.txt"
