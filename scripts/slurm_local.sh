#!/usr/bin/env bash
# A real one-node SLURM on this machine, for `EXECUTOR=slurm` tests and demos.
#
#   scripts/slurm_local.sh up      install (Debian, idempotent), configure, start, wait for an idle node
#   scripts/slurm_local.sh status  daemons + sinfo
#   scripts/slurm_local.sh down    stop the daemons by the PIDs in their pid files (never by name)
#
# Everything (config, state, spool, logs, pid files, a private munge socket) lives under
# $VTP_SLURM_DIR (default /tmp/vtp-slurm); `up` prints `export SLURM_CONF=...` and writes it to
# $VTP_SLURM_DIR/env. Settings (docs/cluster.md#the-one-node-slurm): fast scheduling, cred_expire=5 (a requeued
# job may start again within seconds), kill_invalid_depend (children of a failed afterok parent are
# cancelled instead of pending forever). No accounting: `sacct` fails, and the project does not
# depend on it (the stage status files are the truth). Daemons start with stdio detached so that
# `up | tail` or a CI log pipe finishes. Needs root (apt, munge user, SlurmUser=root).
# VTP_SLURM_CPUS overrides the CPUs declared for the node (more than nproc oversubscribes it).
set -euo pipefail

DIR=${VTP_SLURM_DIR:-/tmp/vtp-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
MUNGE_DIR=$DIR/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2

log() { echo "slurm_local: $*" >&2; }

install_pkgs() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
     && command -v munged >/dev/null; then
    return
  fi
  log "installing slurmctld slurmd slurm-client munge (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null; }
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
  mkdir -p "$DIR"/{state,spool,log,run}
  local cpus=${VTP_SLURM_CPUS:-$(nproc)}
  local mem_total
  mem_total=$(free -m | awk '/^Mem:/{print $2}')
  local mem=$(( mem_total > 4096 ? mem_total - 2048 : mem_total / 2 ))
  cat >"$CONF" <<EOF
# written by scripts/slurm_local.sh — one node, root, no cgroups, no accounting
ClusterName=vtplocal
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${VTP_SLURMCTLD_PORT:-6817}
SlurmdPort=${VTP_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000,sched_interval=2,bf_interval=1
DependencyParameters=kill_invalid_depend
MaxArraySize=${VTP_SLURM_MAX_ARRAY:-1001}
KillWait=${VTP_SLURM_KILLWAIT:-30}
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  echo "export SLURM_CONF=$CONF" >"$DIR/env"
}

start_munge() {
  if pid_alive "$MUNGE_DIR/munged.pid"; then return; fi
  mkdir -p "$MUNGE_DIR"
  chown munge:munge "$MUNGE_DIR"
  chmod 755 "$MUNGE_DIR"   # the socket's folder must be world-executable
  su -s /bin/sh munge -c "/usr/sbin/munged --force --socket=$MUNGE_SOCK --pid-file=$MUNGE_DIR/munged.pid \
      --log-file=$MUNGE_DIR/munged.log --seed-file=$MUNGE_DIR/munged.seed" </dev/null >/dev/null 2>&1
  for _ in $(seq 50); do [[ -S $MUNGE_SOCK ]] && return; sleep 0.1; done
  log "munged did not start (see $MUNGE_DIR/munged.log)"; exit 1
}

cmd_up() {
  install_pkgs
  write_conf
  start_munge
  export SLURM_CONF=$CONF
  pid_alive "$DIR/run/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF" </dev/null >/dev/null 2>&1
  pid_alive "$DIR/run/slurmd.pid" || /usr/sbin/slurmd -f "$CONF" </dev/null >/dev/null 2>&1
  local t0=$SECONDS
  until sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; do
    if (( SECONDS - t0 > 60 )); then
      log "node not idle after 60 s; logs in $DIR/log"; sinfo 2>&1 >&2 || true; exit 1
    fi
    # a node left DOWN by an earlier run comes back with this
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    sleep 0.5
  done
  log "up in $(( SECONDS - t0 ))s: $(sinfo -h -o '%P %t %c CPUs %m MB' | head -1)"
  echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {  # $1 pid file, $2 name: SIGTERM, wait, SIGKILL
  local f=$1 pid
  [[ -s $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    log "stopped $2 ($pid)"
  fi
  rm -f "$f"
}

cmd_down() {
  stop_pidfile "$DIR/run/slurmd.pid" slurmd
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
  stop_pidfile "$MUNGE_DIR/munged.pid" munged
}

cmd_status() {
  local rc=0
  for f in "$MUNGE_DIR/munged.pid" "$DIR/run/slurmctld.pid" "$DIR/run/slurmd.pid"; do
    if pid_alive "$f"; then echo "running $(basename "$f" .pid) pid $(cat "$f")"; else echo "stopped $(basename "$f" .pid)"; rc=1; fi
  done
  if [[ -f $CONF ]]; then SLURM_CONF=$CONF sinfo 2>&1 || rc=1; echo "export SLURM_CONF=$CONF"; fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
