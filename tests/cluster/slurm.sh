#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests (Debian, as root):
# slurmctld, slurmd and slurmdbd with MariaDB accounting, and one fake GPU.
#   tests/cluster/slurm.sh install        apt-get the Debian packages
#   tests/cluster/slurm.sh up STATE_DIR   configure and start the daemons, wait for the node
#   tests/cluster/slurm.sh down STATE_DIR stop the daemons this script started (pid files)
# All state (configs, spool, logs, database, pids) lives under STATE_DIR, except the
# config SLURM's clients read from /etc/slurm (slurm.conf, gres.conf, slurmdbd.conf): `up`
# keeps what was there and `down` puts it back. That matters beyond tidiness: with a
# slurm.conf naming a stopped controller, `scontrol show config` waits 9 s, and the SLURM
# executor plugin runs it whenever Snakemake starts (even `snakemake -n` without SLURM).
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { echo "[slurm.sh] $*" >&2; }

wait_for() { # seconds, description, command...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq "$((seconds * 4))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  log "timed out after ${seconds}s waiting for $what"
  return 1
}

install() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
}

CONFIGS=(slurm.conf gres.conf slurmdbd.conf)

keep_configs() {
  local state=$1 name
  mkdir -p "$state/etc-kept"
  [ -f "$state/etc-kept/done" ] && return 0
  for name in "${CONFIGS[@]}"; do
    [ -f "/etc/slurm/$name" ] && cp -p "/etc/slurm/$name" "$state/etc-kept/$name"
  done
  touch "$state/etc-kept/done"
}

restore_configs() {
  local state=$1 name
  [ -f "$state/etc-kept/done" ] || return 0
  for name in "${CONFIGS[@]}"; do
    if [ -f "$state/etc-kept/$name" ]; then
      cp -p "$state/etc-kept/$name" "/etc/slurm/$name"
    else
      rm -f "/etc/slurm/$name"
    fi
  done
  rm -rf "$state/etc-kept"
}

write_configs() {
  local state=$1 node cpus sockets cores threads mem_mb
  node=$(hostname -s)
  # The node line from slurmd itself, memory at 85 % of RAM.
  read -r cpus sockets cores threads < <(slurmd -C | awk '/^NodeName/ {
      for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      print v["CPUs"], v["SocketsPerBoard"] ? v["SocketsPerBoard"] : v["Sockets"], v["CoresPerSocket"], v["ThreadsPerCore"] }')
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.85)}' /proc/meminfo)
  mkdir -p /etc/slurm "$state"/{ctld,d,log,run,db,dev}
  chown -R slurm:slurm "$state"/ctld "$state"/log "$state"/run
  # A character device standing in for a GPU (a /dev/null clone, never /dev/nvidia*).
  # Two of them: the workflow's network jobs each ask for one GPU, and with one the test
  # cluster ran them one at a time on a 2-core node.
  for i in 0 1; do
    [ -e "$state/dev/fakegpu$i" ] || mknod "$state/dev/fakegpu$i" c 1 3
  done
  # For the fault tests (test_slurm.py), a dead node must cost seconds, not minutes:
  # SlurmdTimeout (300 s by default) is how long slurmctld waits before it sets a silent node
  # DOWN and requeues its jobs; cred_expire (120 s) is also how long a requeued job waits
  # before it may start again; bf_interval (30 s) how often the backfill scheduler looks
  # for a job that became eligible. KillWait: 5 s from SIGTERM to SIGKILL at a time limit.
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=robuniv
SlurmctldHost=$node
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStoreFlags=job_comment
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=300
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
SlurmdTimeout=10
AuthInfo=cred_expire=15
SchedulerParameters=bf_interval=5
NodeName=$node CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$node Name=gpu File=$state/dev/fakegpu[0-1]" >/etc/slurm/gres.conf
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=robuniv
StorageLoc=slurm_acct_db
PidFile=$state/run/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 600 /etc/slurm/slurmdbd.conf
}

up() {
  local state=$1
  mkdir -p "$state"
  state=$(cd "$state" && pwd)
  keep_configs "$state"
  write_configs "$state"
  if ! munge -n >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --force --pid-file="/run/munge/munged.pid"
    echo munged >>"$state/started"
    wait_for 30 munged munge -n
  fi
  if [ ! -d "$state/db/mysql" ]; then
    mariadb-install-db --user=mysql --datadir="$state/db" >/dev/null
    chown -R mysql:mysql "$state/db"
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  mariadbd --user=mysql --datadir="$state/db" --bind-address=127.0.0.1 \
    --socket=/run/mysqld/mysqld.sock --pid-file="$state/db/mariadb.pid" \
    --log-error="$state/db/mariadb.log" &
  echo mariadb >>"$state/started"
  wait_for 60 MariaDB mariadb -uroot -e "SELECT 1"
  mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'robuniv';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'robuniv';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  slurmdbd
  echo slurmdbd >>"$state/started"
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster robuniv >/dev/null 2>&1 || true
  slurmctld
  echo slurmctld >>"$state/started"
  wait_for 60 slurmctld scontrol ping
  sacctmgr -i add account robuniv Cluster=robuniv >/dev/null 2>&1 || true
  sacctmgr -i add user root Account=robuniv >/dev/null 2>&1 || true
  slurmd
  echo slurmd >>"$state/started"
  wait_for 60 "an idle node" bash -c "sinfo -h -o %T | grep -qx idle"
  log "cluster up: $(sinfo -h -o '%P %D %T %G')"
}

down() {
  local state=$1 name pidfile pid
  restore_configs "$state"
  [ -f "$state/started" ] || return 0
  # Reverse start order; only what this script started, by its pid file.
  for name in $(tac "$state/started"); do
    case $name in
      munged) pidfile=/run/munge/munged.pid ;;
      mariadb) pidfile=$state/db/mariadb.pid ;;
      *) pidfile=$state/run/$name.pid ;;
    esac
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      wait_for 30 "$name to stop" bash -c "! kill -0 $pid 2>/dev/null" || true
      log "stopped $name"
    fi
  done
  rm -f "$state/started"
}

case "${1:-}" in
  install) install ;;
  up) up "${2:?state directory}" ;;
  down) down "${2:?state directory}" ;;
  *)
    echo "usage: $0 install | up STATE_DIR | down STATE_DIR" >&2
    exit 2
    ;;
esac
