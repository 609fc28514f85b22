#!/usr/bin/env bash
# Drives a cluster started by scripts/ha/up.sh (HA_DIR, default ./var/ha) for
# authgate's fault tests, which parse stdout: each command prints exactly one
# line (members: one per member); diagnostics go to stderr.
#   leader                       the leader's member name (exit 1 if none runs)
#   members                      "name role state lag" per member (Patroni /cluster)
#   kill-leader                  kill -9 the leader's postmaster; prints its name
#   wait-leader-change OLD SECS  until a leader other than OLD runs and a write
#                                through HAProxy commits; prints it (exit 1: timeout)
#   wait-healthy SECS            until one leader, two running streaming replicas,
#                                one sync standby; prints "healthy" (exit 1:
#                                timeout, member table on stderr)
#   switchover                   planned switchover to the sync standby; waits
#                                until writes through HAProxy commit; prints the
#                                new leader
#   restart-pooler SECS_DOWN     kill -9 PgBouncer, keep it down SECS_DOWN s, start
#                                it with the same config, wait until a query
#                                through it works; prints "pooler up"
#   kill-leader-node             kill -9 the leader's Patroni, then its postmaster
#                                (a lost machine: nobody releases the leader key,
#                                it expires after ttl); prints its name
#   start-node NAME              start NAME's Patroni again (after kill-leader-node);
#                                prints NAME
#   psql-leader ARGS...          psql through HAProxy as the superuser
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2; }
cmd="${1:-}"; [ -n "$cmd" ] || usage; shift
load_env

# healthy: one running leader, two running replicas of which one is the sync
# standby, and the leader streams to both.
healthy() {
  local table
  table="$(members_table 2>/dev/null)" || return 1
  [ "$(awk '$2 == "leader" && $3 == "running"' <<<"$table" | wc -l)" -eq 1 ] || return 1
  [ "$(awk '$2 != "leader" && ($3 == "running" || $3 == "streaming") && $4 != "unknown"' <<<"$table" | wc -l)" -eq 2 ] || return 1
  [ "$(awk '$2 == "sync_standby" && ($3 == "running" || $3 == "streaming")' <<<"$table" | wc -l)" -eq 1 ] || return 1
  [ "$(sql "$HA_PROXY_URL" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 2 ]
}
# wait_writable_leader NOT SECS: a leader other than NOT (empty: any) runs and
# a write through HAProxy commits on it; prints its name.
wait_writable_leader() {
  local not=$1 deadline=$((SECONDS + $2)) l
  while [ $SECONDS -lt $deadline ]; do
    l="$(leader_name || true)"
    if [ -n "$l" ] && [ "$l" != "$not" ] && can_write "$HA_PROXY_URL"; then
      # The write went to the node HAProxy routes to: make sure that is $l.
      if [ "$(sql "$HA_PROXY_URL" 'SHOW port')" = "${PG_PORTS[$(node_index "$l")]}" ]; then
        echo "$l"; return 0
      fi
    fi
    sleep 0.2
  done
  return 1
}
need_secs() { case "${1:-}" in ''|*[!0-9]*) echo "$cmd: seconds expected, got '${1:-}'" >&2; exit 2 ;; esac; }

case "$cmd" in
  leader)
    leader_name || { echo "no running leader" >&2; exit 1; } ;;
  members)
    members_table || { echo "no Patroni REST answers" >&2; exit 1; } ;;
  kill-leader)
    l="$(leader_name)" || { echo "no running leader" >&2; exit 1; }
    pidfile="$HA_DIR/$l/data/postmaster.pid"
    pid="$(head -n 1 "$pidfile")"
    kill -9 "$pid"
    echo "killed the postmaster of $l (pid $pid)" >&2
    echo "$l" ;;
  wait-leader-change)
    [ $# -eq 2 ] || usage
    need_secs "$2"
    wait_writable_leader "$1" "$2" || { echo "no new writable leader within $2 s" >&2; members_table >&2 || true; exit 1; } ;;
  wait-healthy)
    [ $# -eq 1 ] || usage
    need_secs "$1"
    deadline=$((SECONDS + $1))
    until healthy; do
      if [ $SECONDS -ge $deadline ]; then
        echo "not healthy within $1 s:" >&2; members_table >&2 || echo "(no Patroni REST answers)" >&2; exit 1
      fi
      sleep 0.5
    done
    echo healthy ;;
  switchover)
    l="$(leader_name)" || { echo "no running leader" >&2; exit 1; }
    c="$(members_table | awk '$2 == "sync_standby" && ($3 == "running" || $3 == "streaming") {print $1}' | head -n 1)"
    [ -n "$c" ] || { echo "no running sync standby to switch over to" >&2; exit 1; }
    # In synchronous_mode Patroni only accepts the sync standby as candidate.
    # Patroni refuses a switchover for a while after a failover (the sync state
    # is still settling): try again for up to 30 s.
    deadline=$((SECONDS + 30))
    until as_owner /usr/bin/patronictl -c "$HA_DIR/$l.yml" switchover --leader "$l" --candidate "$c" --force "$SCOPE" >&2; do
      [ $SECONDS -ge $deadline ] && { echo "patronictl switchover $l -> $c failed for 30 s" >&2; members_table >&2 || true; exit 1; }
      echo "switchover $l -> $c not done yet; retrying" >&2
      sleep 2
    done
    wait_writable_leader "$l" 60 || { echo "switchover to $c did not complete within 60 s" >&2; members_table >&2 || true; exit 1; } ;;
  restart-pooler)
    [ $# -eq 1 ] || usage
    need_secs "$1"
    p="$(pid_of pgbouncer || true)"
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      kill -9 "$p"
      while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
      echo "killed pgbouncer (pid $p)" >&2
    fi
    rm -f "$HA_DIR/run/pgbouncer.pid"
    sleep "$1"
    start_pgbouncer pgbouncer "$HA_DIR/pgbouncer/pgbouncer.ini"
    deadline=$((SECONDS + 30))
    until [ "$(sql "$HA_POOLER_URL" 'SELECT 1')" = 1 ]; do
      [ $SECONDS -ge $deadline ] && { echo "pgbouncer does not answer 30 s after its start" >&2; tail -n 10 "$HA_DIR/log/pgbouncer.log" >&2; exit 1; }
      sleep 0.1
    done
    echo "pooler up" ;;
  kill-leader-node)
    l="$(leader_name)" || { echo "no running leader" >&2; exit 1; }
    pp="$(pid_of "$l")"
    pid="$(head -n 1 "$HA_DIR/$l/data/postmaster.pid")"
    kill -9 "$pp" "$pid"
    echo "killed Patroni (pid $pp) and the postmaster (pid $pid) of $l" >&2
    echo "$l" ;;
  start-node)
    [ $# -eq 1 ] || usage
    node_index "$1" >/dev/null || { echo "no member $1" >&2; exit 2; }
    if pid_alive "$1"; then echo "$1's Patroni is running" >&2; exit 1; fi
    rm -f "$HA_DIR/run/$1.pid"
    start_daemon "$1" "$HA_DIR/log/$1.log" /usr/bin/patroni "$HA_DIR/$1.yml"
    echo "$1" ;;
  psql-leader)
    exec "$PGBIN/psql" "$HA_PROXY_URL" "$@" ;;
  *) usage ;;
esac
