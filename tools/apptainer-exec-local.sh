#!/usr/bin/env bash
# apptainer-exec-local.sh -- a container runtime for HPCSNP_CONTAINER on a machine with no
# Apptainer package (Debian 12): runs `apptainer exec --bind DIRS IMAGE CMD...` inside the
# Debian sid root that the shared apptainer-via-sid.sh bootstraps, with every bound
# directory and the image's directory mounted at their own paths, so a job's paths mean
# the same inside.  As apptainer-via-sid.sh does, the command runs as the unprivileged
# user 'ci' (uid 4242): the bound directories must be writable by it.
# Usage (as root), the way the SLURM scripts call a runtime:
#   HPCSNP_CONTAINER=tools/apptainer-exec-local.sh HPCSNP_IMAGE=apptainer-out/hpcsnp.sif slurm/submit.sh RUN STORE
set -euo pipefail
S="${SIDROOT:-/var/lib/sid-apptainer}"
if [ ! -x "$S/usr/bin/apptainer" ]; then
  echo "apptainer-exec-local: no Apptainer root at $S (tools/apptainer-build-local.sh creates it)" >&2
  exit 2
fi
if [ "${1:-}" != exec ]; then
  echo "usage: $0 exec [--bind DIR,...] IMAGE CMD..." >&2
  exit 2
fi
shift
binds=""
if [ "${1:-}" = --bind ]; then binds="$2"; shift 2; fi
image="$(readlink -f "$1")"; shift
dirs="$(dirname "$image")${binds:+,$binds}"
# shellcheck disable=SC2016  # the script runs in the new namespace, expanded there
exec unshare --mount --pid --fork --propagation private bash -ec '
S=$1 DIRS=$2 BINDS=$3 IMAGE=$4; shift 4
mount --bind "$S" "$S"
mount -t proc proc "$S/proc"
mount --rbind /sys "$S/sys"; mount --rbind /dev "$S/dev"
mount -t tmpfs tmpfs "$S/tmp"
IFS=,
for d in $DIRS; do
  [ -n "$d" ] || continue
  mkdir -p "$S$d"; mount --bind "$d" "$S$d"
done
unset IFS
cd "$S"; mkdir -p .oldroot; pivot_root . .oldroot; cd /
umount -l /.oldroot; mount --make-rshared /
exec setpriv --reuid=ci --regid=ci --init-groups --reset-env \
  env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp \
  apptainer exec ${BINDS:+--bind "$BINDS"} "$IMAGE" "$@"' _ "$S" "$dirs" "$binds" "$image" "$@"
