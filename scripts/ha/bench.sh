#!/usr/bin/env bash
# What each way to the leader costs (issue #19), with pgbench on authgate's OTP
# check statement (scripts/pgbench/otp_check.sql, table from setup.sql) in the
# database authgate of the cluster of scripts/ha/up.sh (started if needed):
#   a        direct to the leader's port, -M prepared (synchronous_mode: each
#            commit waits for the sync standby)
#   a-local  a with synchronous_commit=local (PGOPTIONS): no wait for the standby
#   proxy    through HAProxy, -M prepared
#   b        through PgBouncer, session pooling, -M prepared (what authgate uses)
#   b-ext    that PgBouncer with -M extended: what unnamed statements alone cost
#   c        through a second PgBouncer, transaction pooling, -M extended
#            (unnamed statements)
#   d        that PgBouncer with -M prepared (PgBouncer 1.18 does not track
#            prepared statements in transaction mode: expected to fail)
# ROUNDS rounds (default 2), the order reversed every other round, CLIENTS
# (8) clients, -j 2, DURATION (20) s each; prints one line per run and the
# ratios of the mean tps to a. The transaction-mode PgBouncer (HA_PORT_BASE+41)
# is stopped at the end.
#   bash scripts/ha/bench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/up.sh" >/dev/null
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
load_env
load_secrets
clients="${CLIENTS:-8}" seconds="${DURATION:-20}" rounds="${ROUNDS:-2}"
export PGPASSWORD="$SUPER_PW" PGUSER="$SUPER_USER" PGHOST=127.0.0.1 PGDATABASE=authgate
TX_PORT=$((B + 41))
psql_() { "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -p "$PROXY_PORT" "$@"; }

# The table of setup.sql, once (it drops and recreates it).
if [ "$(psql_ -c "SELECT to_regclass('otp_bench') IS NOT NULL")" != t ]; then
  psql_ -f "$here/../pgbench/setup.sql" >/dev/null
  echo "bench: otp_bench created (100,000 live codes)"
fi

# The transaction-mode PgBouncer: the session one's config, another mode and port.
sed -e 's/^pool_mode = .*/pool_mode = transaction/' -e "s/^listen_port = .*/listen_port = $TX_PORT/" \
  "$HA_DIR/pgbouncer/pgbouncer.ini" | as_owner sh -c "cat >'$HA_DIR/pgbouncer/pgbouncer-tx.ini'"
if ! pid_alive pgbouncer-tx; then
  as_owner touch "$HA_DIR/log/pgbouncer-tx.log"
  start_pgbouncer pgbouncer-tx "$HA_DIR/pgbouncer/pgbouncer-tx.ini"
fi
stop_tx_pooler() {
  local p
  p=$(pid_of pgbouncer-tx) && kill "$p" 2>/dev/null
  rm -f "$HA_DIR/run/pgbouncer-tx.pid"
}
trap stop_tx_pooler EXIT
until "$PGBIN/psql" -XAtq -p "$TX_PORT" -c 'SELECT 1' >/dev/null 2>&1; do sleep 0.1; done

leader="$(leader_name)"
leader_port="${PG_PORTS[$(node_index "$leader")]}"
echo "bench: leader $leader (port $leader_port), sync standby $(members_table | awk '$2 == "sync_standby" {print $1}'); $clients clients, -j 2, ${seconds}s per run, $rounds rounds"
echo "bench: pgbench $("$PGBIN/pgbench" --version | awk '{print $3}'), otp_check.sql"

# run NAME: one pgbench run; prints "NAME tps latency_ms failed" and keeps the output.
out="$(mktemp -d)"
run() {
  local name=$1 port mode opts=""
  case "$name" in
    a) port=$leader_port mode=prepared ;;
    a-local) port=$leader_port mode=prepared opts="-c synchronous_commit=local" ;;
    proxy) port=$PROXY_PORT mode=prepared ;;
    b) port=$POOLER_PORT mode=prepared ;;
    b-ext) port=$POOLER_PORT mode=extended ;;
    c) port=$TX_PORT mode=extended ;;
    d) port=$TX_PORT mode=prepared ;;
  esac
  psql_ -c CHECKPOINT >/dev/null
  local secs=$seconds
  [ "$name" = d ] && secs=5
  PGOPTIONS="$opts" "$PGBIN/pgbench" -n -p "$port" -M "$mode" -c "$clients" -j 2 -T "$secs" \
    -f "$here/../pgbench/otp_check.sql" >"$out/$name.$r" 2>&1 || true
  local tps lat
  tps=$(awk '/^tps/ {print $3; exit}' "$out/$name.$r")
  lat=$(awk '/^latency average/ {print $4; exit}' "$out/$name.$r")
  printf '%-8s port %-5s -M %-8s tps %-9s latency %s ms\n' "$name" "$port" "$mode" "${tps:-0}" "${lat:--}"
  if [ -z "$tps" ] || grep -qiE 'error|aborted' "$out/$name.$r"; then
    grep -iE 'error|aborted' "$out/$name.$r" | sort | uniq -c | sort -rn | head -n 3 | sed 's/^/         /'
  fi
  # A run with errors is not a figure: an aborted run's tps counts only the
  # clients that survived, and in transaction mode a client whose PREPARE failed
  # with "already exists" executes another client's statement of the same name
  # (the same text here only by luck).
  grep -qiE 'error|aborted' "$out/$name.$r" || echo "$name ${tps:-0}" >>"$out/tps"
}
order=(a a-local proxy b b-ext c d)
for r in $(seq "$rounds"); do
  echo "round $r:"
  if [ $((r % 2)) -eq 0 ]; then
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do run "${order[$i]}"; done
  else
    for n in "${order[@]}"; do run "$n"; done
  fi
done
awk '{s[$1] += $2; k[$1]++} END {
  a = s["a"] / k["a"]
  split("a a-local proxy b b-ext c d", o, " ")
  printf "mean tps (ratio to a):"
  for (i = 1; i <= 7; i++)
    if (k[o[i]]) printf " %s %.0f (%.2f)", o[i], s[o[i]] / k[o[i]], s[o[i]] / k[o[i]] / a
    else printf " %s failed", o[i]
  printf "\n" }' "$out/tps"
rm -rf "$out"
