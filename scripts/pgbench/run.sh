#!/usr/bin/env bash
# pgbench of the OTP-check UPDATE at 64 clients on the local PostgreSQL: the
# database bound that authgate's code checks are compared with (README,
# "Performance"). Creates and drops its own database.
#   CLIENTS=64 DURATION=10 bash scripts/pgbench/run.sh
set -euo pipefail
cd "$(dirname "$0")"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
HOST="${PGHOST:-127.0.0.1}"
USER_="${PGUSER:-postgres}"
DB=authgate_pgbench_$$
clients="${CLIENTS:-64}"
seconds="${DURATION:-10}"
psql() { "$PGBIN/psql" -h "$HOST" -U "$USER_" -v ON_ERROR_STOP=1 -q "$@"; }
psql -d postgres -c "CREATE DATABASE $DB"
trap 'psql -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
psql -d "$DB" -f setup.sql
# -M prepared: authgate's driver prepares its statements too; -j 2: two cores.
"$PGBIN/pgbench" -h "$HOST" -U "$USER_" -n -M prepared -c "$clients" -j 2 \
  -T "$seconds" -f otp_check.sql "$DB"
