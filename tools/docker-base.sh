#!/usr/bin/env bash
# docker-base.sh -- make Docker usable where Docker Hub is not reachable: start dockerd
# if needed and build the base image hpcsnp-base:bookworm from the Debian archive
# (debootstrap, python3.11 + venv).  A site CA bundle in PIP_CERT is added to the
# image (as a site's own base image would carry it) so pip can reach PyPI.  Idempotent.
# Then:  docker build --build-arg BASE=hpcsnp-base:bookworm -t hpcsnp .
set -euo pipefail
image="${1:-hpcsnp-base:bookworm}"
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq >/dev/null && apt-get install -y -qq docker.io debootstrap >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  (nohup dockerd >/var/log/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "docker-base: dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
root="$(mktemp -d /var/tmp/bookworm.XXXX)"
debootstrap --variant=minbase --include=python3-minimal,python3-venv bookworm "$root" \
  http://deb.debian.org/debian >/dev/null
env_args=()
if [ -f "${PIP_CERT:-}" ]; then
  cp "$PIP_CERT" "$root/etc/ssl/certs/site-ca.crt"
  env_args=(-c 'ENV PIP_CERT=/etc/ssl/certs/site-ca.crt')
fi
tar -C "$root" -c . | docker import "${env_args[@]}" - "$image" >/dev/null
rm -rf "$root"
echo "docker-base: built $image" >&2
