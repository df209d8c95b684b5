# hpcsnp-run.sh -- sourced by cv_array.sh, reduce.sh and submit.sh: the one place that
# decides how `hpcsnp` is run.  After `hpcsnp_command PATH...` the array "hpcsnp" holds
#   the installed command        ${HPCSNP:-hpcsnp}
#   or, with HPCSNP_IMAGE set,   RUNTIME exec --bind DIRS IMAGE hpcsnp
# where RUNTIME is HPCSNP_CONTAINER or the first of apptainer/singularity found, and DIRS
# are the directories of the given PATHs (run directory, stores) plus HPCSNP_BIND, so that
# a store or run on another file system is visible inside the container.  A job granted
# GPUs (--gres=gpu:1 in HPCSNP_SBATCH_ARGS: SLURM_JOB_GPUS is set) runs the image with --nv,
# so that the GPU image (built with EXTRAS=gpu) sees them.
# shellcheck shell=bash

# shellcheck disable=SC2034  # hpcsnp is this function's result, used by the sourcing script
hpcsnp_command() {
  if [ -n "${HPCSNP_IMAGE:-}" ]; then
    local runtime binds="" p d
    runtime="${HPCSNP_CONTAINER:-$(command -v apptainer || command -v singularity || echo apptainer)}"
    for p in "$@"; do
      if [ -d "$p" ] && [ "${p%.zarr}" = "$p" ]; then d="$(readlink -f "$p")"; else d="$(dirname "$(readlink -f "$p")")"; fi
      binds="${binds:+$binds,}$d"
    done
    local nv=()
    if [ -n "${SLURM_JOB_GPUS:-}" ]; then nv=(--nv); fi
    hpcsnp=("$runtime" exec ${nv[@]+"${nv[@]}"} --bind "${binds}${HPCSNP_BIND:+,$HPCSNP_BIND}" "$HPCSNP_IMAGE" hpcsnp)
  else
    hpcsnp=("${HPCSNP:-hpcsnp}")
  fi
}
