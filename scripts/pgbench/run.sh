#!/usr/bin/env bash
# pgbench at 64 clients on the local PostgreSQL: the database bound that
# authgate's code checks are compared with (README, "Performance"). Creates and
# drops its own database.
#   bash scripts/pgbench/run.sh            # otp_check.sql: the single-row UPDATE
#   bash scripts/pgbench/run.sh confirm    # otp_confirm.sql: authgate's own check
#                                          # statement (code, user, audit row)
#   CLIENTS=64 DURATION=10 bash scripts/pgbench/run.sh
# The server: PGHOST, PGPORT, PGUSER (PGPASSWORD if needed), default
# 127.0.0.1:5432 as postgres. scripts/bench/ratios.sh sets them from the
# DATABASE_URL it also gives authgate-load, so both measure the same PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")"
PGBIN="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
HOST="${PGHOST:-127.0.0.1}"
PORT="${PGPORT:-5432}"
USER_="${PGUSER:-postgres}"
DB=authgate_pgbench_$$
clients="${CLIENTS:-64}"
seconds="${DURATION:-10}"
which="${1:-check}"
psql() { "$PGBIN/psql" -h "$HOST" -p "$PORT" -U "$USER_" -v ON_ERROR_STOP=1 -q "$@"; }
psql -d postgres -c "CREATE DATABASE $DB"
trap 'psql -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
case "$which" in
  check)
    psql -d "$DB" -f setup.sql
    script=otp_check.sql ;;
  confirm)
    # authgate's schema, from its own migrations, in order.
    for m in $(ls ../../migrations/V*__*.sql | sort -V); do psql -d "$DB" -f "$m"; done
    psql -d "$DB" -v rows=500000 -f confirm_seed.sql
    script=otp_confirm.sql ;;
  *) echo "usage: run.sh [check|confirm]" >&2; exit 2 ;;
esac
# -M prepared: authgate's driver prepares its statements too; -j 2: two cores
# (pgbench lowers it to the number of clients).
"$PGBIN/pgbench" -h "$HOST" -p "$PORT" -U "$USER_" -n -M prepared -c "$clients" -j 2 \
  -T "$seconds" -f "$script" "$DB"
