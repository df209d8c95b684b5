#!/usr/bin/env bash
# local-cluster.sh -- bring up (idempotently) a one-node SLURM cluster on this machine,
# for tests and CI: munged, slurmctld and slurmd on localhost, run as root, no systemd,
# no cgroups.  Waits until the node is idle.  Usage:
#   slurm/local-cluster.sh up      # install if needed, configure, start, wait idle (default)
#   slurm/local-cluster.sh down    # stop the daemons
#   slurm/local-cluster.sh status
# Environment: HPCSNP_SLURM_INSTALL=0 to never apt-get install (fail instead).
set -euo pipefail
cmd="${1:-up}"
conf=/etc/slurm/slurm.conf
host="$(hostname -s)"

running() { pgrep -x "$1" >/dev/null 2>&1; }

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 1 30); do
    running slurmctld || running slurmd || return 0
    sleep 0.5
  done
  pkill -9 -x slurmd 2>/dev/null || true
  pkill -9 -x slurmctld 2>/dev/null || true
}

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  if [ "${HPCSNP_SLURM_INSTALL:-1}" = 0 ]; then echo "local-cluster: slurm-wlm/munge not installed" >&2; exit 1; fi
  echo "local-cluster: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

configure() {
  local cpus mem
  # what slurmd itself detects (nproc would follow OMP_NUM_THREADS)
  cpus="$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)"
  # whole GiB, 90 %: MemTotal drifts by a few MB on VMs, and any change restarts the daemons
  mem="$(awk '/MemTotal/ {print int($2 / 1048576 * 0.9) * 1024}' /proc/meminfo)"
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
  local want
  want="$(cat <<CONF
# written by hpcsnp slurm/local-cluster.sh
ClusterName=hpcsnp-local
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it every job asks for the whole node and array tasks run one at a time
DefMemPerCPU=1024
# keep finished jobs visible to scontrol (there is no slurmdbd/sacct here)
MinJobAge=86400
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
# an afterok job whose dependency failed is cancelled, not left pending forever
DependencyParameters=kill_invalid_depend
JobRequeue=1
ReturnToService=2
SchedulerParameters=sched_interval=2
MaxArraySize=1001
NodeName=${host} CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
)"
  if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    printf '%s\n' "$want" > "$conf"
    # a changed configuration needs restarted daemons; wait until the old ones are gone
    stop
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
}

start() {
  running munged || su -s /bin/sh munge -c /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  running slurmctld || /usr/sbin/slurmctld
  running slurmd || /usr/sbin/slurmd
}

wait_idle() {
  local state
  for _ in $(seq 1 60); do
    state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
    case "$state" in
      idle*|mixed*|allocated*) echo "local-cluster: node $host is $state" >&2; return 0 ;;
      down*|drain*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
  done
  echo "local-cluster: node $host not idle after 60 s (state: ${state:-none}); see /var/log/slurm/" >&2
  exit 1
}

case "$cmd" in
  up) install; configure; start; wait_idle ;;
  down) stop ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
