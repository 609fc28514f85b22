#!/usr/bin/env bash
# What a NOTIFY in the enqueue transaction costs (issue #15): pgbench on the
# local PostgreSQL, back to back on one fresh copy of authgate's schema,
#   1. outbox_insert.sql         INSERT into sms_outbox, commit (authgate now)
#   2. outbox_insert_notify.sql  the same plus pg_notify in the transaction
#                                (authgate before #15)
#   3. outbox_insert_backlog.sql 1, plus one NOTIFY in its own transaction per
#                                50 inserts (the SMS actor's full-claim NOTIFY
#                                under a backlog, at the default batch size)
# and prints the tps of each and their ratio to the first. Only the ratio means anything:
# absolute figures swing with the machine. Creates and drops its own database.
#   bash scripts/pgbench/notify.sh
#   CLIENTS=64 DURATION=10 ROUNDS=2 bash scripts/pgbench/notify.sh
set -euo pipefail
cd "$(dirname "$0")"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
HOST="${PGHOST:-127.0.0.1}"
USER_="${PGUSER:-postgres}"
DB=authgate_pgbench_notify_$$
clients="${CLIENTS:-64}"
seconds="${DURATION:-10}"
rounds="${ROUNDS:-1}"
psql() { "$PGBIN/psql" -h "$HOST" -U "$USER_" -v ON_ERROR_STOP=1 -q "$@"; }
psql -d postgres -c "CREATE DATABASE $DB"
trap 'psql -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
# authgate's schema, from its own migrations, in order.
for m in $(ls ../../migrations/V*__*.sql | sort -V); do psql -d "$DB" -f "$m"; done
# Both runs start from the same state: empty table, fresh statistics.
reset() { psql -d "$DB" -c "TRUNCATE sms_outbox; CHECKPOINT;" >/dev/null; }
bench() {
  reset
  # -M prepared: authgate's driver prepares its statements too; -j 2: two cores.
  "$PGBIN/pgbench" -h "$HOST" -U "$USER_" -n -M prepared -c "$clients" -j 2 \
    -T "$seconds" -f "$1" "$DB" 2>&1 | awk '/^tps/ {print $3; exit}'
}
for r in $(seq "$rounds"); do
  plain=$(bench outbox_insert.sql)
  notify=$(bench outbox_insert_notify.sql)
  backlog=$(bench outbox_insert_backlog.sql)
  awk -v r="$r" -v c="$clients" -v s="$seconds" -v a="$plain" -v b="$notify" -v d="$backlog" 'BEGIN {
    printf "round %s: %s clients, %ss each: INSERT %.0f tps | INSERT+NOTIFY %.0f tps (%.2fx of INSERT) | INSERT + 1 NOTIFY per 50 %.0f tps (%.2fx)\n",
      r, c, s, a, b, b / a, d, d / a }'
done
