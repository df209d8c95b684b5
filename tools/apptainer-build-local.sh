#!/usr/bin/env bash
# apptainer-build-local.sh -- build and %test Singularity.def where Docker Hub is not
# reachable: the def's "Bootstrap: docker / From:" header is replaced by a Debian
# bookworm debootstrap (python3.11 + venv); every other section is the file's own.
# Needs Apptainer; on Debian 12 use the project's shared apptainer-via-sid.sh:
#   tools/apptainer-build-local.sh [APPTAINER_VIA_SID]   -> apptainer-out/hpcsnp.sif
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
via="${1:-$root/../shared/tools/apptainer-via-sid.sh}"
out="$root/apptainer-out"
mkdir -p "$out"
# A site that reaches PyPI through a TLS-inspecting proxy trusts its own CA (PIP_CERT):
# hand that bundle to the build, as the site's base image would have it.
ca="${PIP_CERT:-}"
{
  printf 'Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://deb.debian.org/debian\n'
  printf 'Include: python3-minimal python3-venv ca-certificates\n'
  if [ -f "$ca" ]; then
    cp "$ca" "$out/site-ca.crt"
    sed -e '/^Bootstrap:/d' -e '/^From:/d' \
        -e 's|^%files$|%files\n    /out/site-ca.crt /etc/ssl/certs/site-ca.crt|' \
        -e 's|^%post$|%post\n    export PIP_CERT=/etc/ssl/certs/site-ca.crt|' "$root/Singularity.def"
  else
    sed -e '/^Bootstrap:/d' -e '/^From:/d' "$root/Singularity.def"
  fi
} > "$out/local.def"
OUT_DIR="$out" "$via" "$root" apptainer build --force /out/hpcsnp.sif /out/local.def
OUT_DIR="$out" "$via" "$root" apptainer test /out/hpcsnp.sif
ls -la "$out/hpcsnp.sif"
