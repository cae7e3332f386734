#!/usr/bin/env bash
# Stop the one-node Slurm cluster started by start-slurm.sh. Idempotent.
# Order: cancel all jobs (while slurmd is still there to kill them), then
# slurmd, slurmctld, munged. State in /var/spool stays (a later start keeps
# job ids counting up); delete /var/spool/slurmctld/* for a clean slate.
set -uo pipefail

alive() {  # $1 pid $2 comm ; zombies (not yet reaped by PID 1) count as dead
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}
stop_pidfile() {  # $1 pidfile  $2 comm
  local pid=""
  [ -s "$1" ] && pid=$(cat "$1")
  if [ -n "$pid" ] && alive "$pid" "$2"; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do alive "$pid" "$2" || break; sleep 0.1; done
    if alive "$pid" "$2"; then
      echo "stop-slurm: $2 ($pid) ignored TERM, KILL" >&2; kill -9 "$pid" 2>/dev/null
    fi
  fi
  rm -f "$1"
}

if [ -s /run/slurmctld.pid ] && alive "$(cat /run/slurmctld.pid)" slurmctld; then
  ids=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null || true
    # let slurmd deliver the kills before it goes away (completing -> gone)
    for _ in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi
stop_pidfile /run/slurmd.pid slurmd
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/munge/munged.pid munged
rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
echo "OK slurm stopped"
