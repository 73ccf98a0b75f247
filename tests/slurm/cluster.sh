#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for fireablate's Slurm tests (needs root).
#
#   tests/slurm/cluster.sh install   # Debian's slurm-wlm daemons and munge
#   tests/slurm/cluster.sh start     # munged, slurmctld, slurmd; prints the SLURM_CONF to export
#   tests/slurm/cluster.sh stop      # stops what start started, by the processes' own pids
#
# Everything lives in $FIREABLATE_SLURM_DIR (default /tmp/fireablate-slurm); clients find the
# cluster through SLURM_CONF=$FIREABLATE_SLURM_DIR/slurm.conf.
set -euo pipefail
DIR=${FIREABLATE_SLURM_DIR:-/tmp/fireablate-slurm}
CONF=$DIR/slurm.conf

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmd slurmctld slurm-client munge >/dev/null
}

start() {
  mkdir -p "$DIR/state" "$DIR/spool"
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$DIR/munged.pid"   # ours to stop
  fi
  host=$(hostname -s)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat >"$CONF" <<CONF
ClusterName=fireablate
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=3600
KillWait=5
NodeName=$host CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  /usr/sbin/slurmctld -f "$CONF"
  /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 100); do
    if SLURM_CONF=$CONF sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.2
  done
  echo "slurm did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
  return 1
}

stop() {
  # end the jobs first: their step daemons would outlive slurmd
  if [ -s "$DIR/slurmctld.pid" ]; then
    SLURM_CONF=$CONF scancel --partition debug 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(SLURM_CONF=$CONF squeue -h 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for f in slurmd.pid slurmctld.pid munged.pid; do
    if [ -s "$DIR/$f" ]; then
      kill "$(cat "$DIR/$f")" 2>/dev/null || true
      rm -f "$DIR/$f"
    fi
  done
}

"${1:?usage: cluster.sh install|start|stop}"
