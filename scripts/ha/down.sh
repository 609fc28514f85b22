#!/usr/bin/env bash
# Stops everything scripts/ha/up.sh started in HA_DIR (default ./var/ha): the
# Patroni nodes first, replicas before the leader so none of them fails over,
# then any PostgreSQL left behind, HAProxy, PgBouncer (and bench.sh's
# transaction-mode copy), etcd. Each gets SIGTERM, up to 15 s, then SIGKILL.
# Then checks that no process mentioning HA_DIR and no listener on its ports is
# left (exit 1 if one is). --purge also removes HA_DIR. Safe to run twice and on
# a half-started cluster.
#   bash scripts/ha/down.sh [--purge]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
purge=0
case "${1:-}" in
  --purge) purge=1 ;;
  '') ;;
  *) echo "usage: down.sh [--purge]" >&2; exit 2 ;;
esac
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
if [ ! -d "$HA_DIR" ]; then
  echo "down: $HA_DIR does not exist; nothing to stop"
  exit 0
fi
if [ ! -e "$HA_DIR/.authgate-ha" ] && [ -n "$(ls -A "$HA_DIR")" ]; then
  echo "down: $HA_DIR is not an authgate HA directory (no .authgate-ha); not touching it" >&2
  exit 1
fi

# stop_pids LABEL PID...: SIGTERM, wait up to 15 s, SIGKILL what is left.
stop_pids() {
  local label=$1; shift
  local live=() p
  for p in "$@"; do kill -0 "$p" 2>/dev/null && live+=("$p"); done
  [ ${#live[@]} -eq 0 ] && return 0
  kill -TERM "${live[@]}" 2>/dev/null || true
  local _
  for _ in $(seq 150); do
    local left=()
    for p in "${live[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
    if [ ${#left[@]} -eq 0 ]; then echo "down: stopped $label"; return 0; fi
    sleep 0.1
  done
  kill -KILL "${left[@]}" 2>/dev/null || true
  echo "down: killed $label (still running 15 s after SIGTERM)"
}
live_pid() { local p; p=$(pid_of "$1" 2>/dev/null) && kill -0 "$p" 2>/dev/null && echo "$p"; }

# Patroni: replicas first, then the leader (whoever /cluster says leads).
leader="$(leader_name 2>/dev/null || true)"
order=()
for n in "${NODES[@]}"; do [ "$n" != "$leader" ] && order+=("$n"); done
[ -n "$leader" ] && order+=("$leader")
for n in "${order[@]}"; do
  p=$(live_pid "$n" || true)
  [ -n "$p" ] && stop_pids "patroni $n (pid $p)" "$p"
done
# A PostgreSQL whose Patroni died (or was killed) keeps running: stop it too.
for n in "${NODES[@]}"; do
  pidfile="$HA_DIR/$n/data/postmaster.pid"
  [ -s "$pidfile" ] || continue
  p=$(head -n 1 "$pidfile")
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$HA_DIR/$n/data"; then
    stop_pids "PostgreSQL of $n (pid $p)" "$p"
  fi
done
for n in haproxy pgbouncer pgbouncer-tx etcd; do
  p=$(live_pid "$n" || true)
  [ -n "$p" ] && stop_pids "$n (pid $p)" "$p"
done

# Anything else that mentions HA_DIR (a daemon whose pid file was lost, the
# runuser wrappers): the same treatment.
others() {
  local p
  for p in $(pgrep -f -- "$HA_DIR/" 2>/dev/null || true); do
    [ "$p" = $$ ] || [ "$p" = "$PPID" ] && continue
    echo "$p"
  done
}
sleep 0.2
mapfile -t rest < <(others)
[ ${#rest[@]} -gt 0 ] && stop_pids "leftover processes (${rest[*]})" "${rest[@]}"
rm -f "$HA_DIR"/run/*.pid

# Verify: no process, no listener (PostgreSQL backends exit shortly after their
# postmaster, so give the ports a few seconds).
bad=""
for _ in $(seq 50); do
  bad=""
  mapfile -t rest < <(others)
  [ ${#rest[@]} -gt 0 ] && bad="processes: $(ps -o pid=,args= -p "$(IFS=,; echo "${rest[*]}")" | tr '\n' ';')"
  for port in "${ALL_PORTS[@]}" $((B + 41)); do
    if ss -Hltn "sport = :$port" | grep -q .; then bad="$bad listener on $port"; fi
  done
  [ -z "$bad" ] && break
  sleep 0.1
done
if [ -n "$bad" ]; then
  echo "down: still running after stop: $bad" >&2
  exit 1
fi
echo "down: nothing of $HA_DIR is running"
if [ $purge -eq 1 ]; then
  rm -rf -- "$HA_DIR"
  echo "down: removed $HA_DIR"
fi
