#!/usr/bin/env bash
# Every ratio of issue 15 in one sitting, back to back, as one table
# (README, "Performance"):
#   - pgbench's single-row UPDATE (scripts/pgbench/run.sh, check) at 1 client
#     (before and after the 1-user runs) and at 64 clients: tps and average
#     latency, the database bound;
#   - authgate-load's flows code-check, check, login and 2fa-login at 1 and at
#     64 virtual users, each run on a server of its own (fresh database);
#   - the argon2 bound (authgate-load --argon2-bound), just before and just
#     after the 64-user login run (the machine's speed drifts);
# then prints the figures, the ratios with their targets (met / missed), the
# server's peak resident memory over all runs and the SMS outbox depth.
#
#   bash scripts/bench/ratios.sh                 # 10 s per run, about 4 minutes
#   QUICK=1 bash scripts/bench/ratios.sh         # 3 s per run: a smoke test
#   SECONDS_PER_RUN=20 bash scripts/bench/ratios.sh
#
# Environment:
#   DATABASE_URL     the PostgreSQL of pgbench AND authgate (same server, so the
#                    ratios compare like with like); default
#                    postgres://postgres@127.0.0.1:5432. Both create a scratch
#                    database on it and drop it afterwards.
#   SECONDS_PER_RUN  seconds per pgbench and load run (default 10, QUICK=1: 3)
#   ARGON2_SECONDS   seconds per argon2 bound (default 5, QUICK=1: 2)
#   USERS            the "many users" count (default 64; the targets are for 64)
#   OUT              where raw outputs and JSON go (default
#                    target/bench/ratios-<date>); the table is also OUT/table.md
#   NO_BUILD=1       measure target/release/* as they are; otherwise
#                    `cargo build --release --bin authgate --bin authgate-load`
#                    runs first (a no-op when they are up to date)
#   STRICT=1         exit 3 when a target is missed (default: only a failed run
#                    makes the exit status non-zero)
set -uo pipefail
cd "$(dirname "$0")/../.."

if [[ "${QUICK:-0}" == 1 ]]; then secs_default=3 argon_default=2; else secs_default=10 argon_default=5; fi
SECS="${SECONDS_PER_RUN:-$secs_default}"
ARGON2_SECS="${ARGON2_SECONDS:-$argon_default}"
MANY="${USERS:-64}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
OUT="${OUT:-target/bench/ratios-$(date +%Y%m%d-%H%M%S)}"
LOAD=target/release/authgate-load
mkdir -p "$OUT"

die() { echo "ratios.sh: $*" >&2; exit 2; }
command -v python3 >/dev/null || die "python3 is needed to read the JSON summaries"
[[ "$SECS" =~ ^[0-9]+$ && "$SECS" -ge 1 && "$SECS" -le 600 ]] || die "SECONDS_PER_RUN: 1 to 600"
[[ "$ARGON2_SECS" =~ ^[0-9]+$ && "$ARGON2_SECS" -ge 1 && "$ARGON2_SECS" -le 60 ]] || die "ARGON2_SECONDS: 1 to 60"
[[ "$MANY" =~ ^[0-9]+$ && "$MANY" -ge 2 && "$MANY" -le 1024 ]] || die "USERS: 2 to 1024"

# pgbench reaches the same server through libpq's variables.
eval "$(python3 - <<'EOF'
import os, shlex, urllib.parse as up
u = up.urlsplit(os.environ["DATABASE_URL"])
q = dict(up.parse_qsl(u.query))
env = {"PGHOST": q.get("host") or u.hostname or "127.0.0.1",
       "PGPORT": str(q.get("port") or u.port or 5432),
       "PGUSER": up.unquote(q.get("user") or u.username or "postgres")}
if u.password:
    env["PGPASSWORD"] = up.unquote(u.password)
for k, v in env.items():
    print(f"export {k}={shlex.quote(v)}")
EOF
)" || die "DATABASE_URL is not a postgres:// URL"
PSQL="${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}/psql"
"$PSQL" -d postgres -Atqc 'SELECT 1' >/dev/null ||
  die "no PostgreSQL at $PGHOST:$PGPORT (user $PGUSER): set DATABASE_URL"

if [[ "${NO_BUILD:-0}" != 1 ]]; then
  echo "building the release binaries (cargo build --release; a no-op when up to date) ..."
  nice -n 10 cargo build --release --bin authgate --bin authgate-load >"$OUT/build.txt" 2>&1 ||
    { tail -20 "$OUT/build.txt" >&2; die "release build failed (log: $OUT/build.txt)"; }
fi
[[ -x "$LOAD" && -x target/release/authgate ]] || die "no $LOAD or target/release/authgate (NO_BUILD=1?)"

failed=0
step=0
total=13
say() { step=$((step + 1)); printf '[%2d/%d] %-40s ' "$step" "$total" "$*"; }

# The PostgreSQL is shared (other test suites, max_connections): wait, up to
# 2 minutes, until N client connections are free, so that a run is not refused
# with "too many clients already" half-way.
free_slots() {
  "$PSQL" -d postgres -Atqc "SELECT current_setting('max_connections')::int
    - current_setting('superuser_reserved_connections')::int - count(*)
    FROM pg_stat_activity WHERE backend_type = 'client backend'" 2>/dev/null || echo 0
}
wait_for_slots() {
  local need="$1" deadline=$(($(date +%s) + 120)) free
  while free=$(free_slots); ((free < need)) && (($(date +%s) < deadline)); do
    sleep 2
  done
  ((free >= need)) || printf '(only %s of %s connections free) ' "$free" "$need"
}

# pgbench CLIENTS [SUFFIX] -> OUT/pgbench-CLIENTS[SUFFIX].txt; retried twice
# when refused.
pgbench_run() {
  local out="$OUT/pgbench-$1${2:-}.txt" try
  say "pgbench single-row UPDATE, $1 client(s)${2:+ (${2#-})}"
  for try in 1 2 3; do
    wait_for_slots $(($1 + 2))
    if CLIENTS="$1" DURATION="$SECS" bash scripts/pgbench/run.sh check >"$out" 2>&1; then
      grep -E '^(tps|latency average)' "$out" | sed 's/ (without.*//' | tr '\n' ' '
      ((try > 1)) && printf '(try %s)' "$try"
      echo
      return
    fi
    grep -q 'too many clients' "$out" || break
    sleep 5
  done
  echo "FAILED (see $out)"; failed=1
}

# load FLOW USERS -> OUT/FLOW-USERS.{txt,json}
load_run() {
  local flow="$1" users="$2" extra=()
  # `check` spends one seeded user per check: enough for 4,000 checks/s.
  if [[ "$flow" == check ]]; then
    local per=$(((SECS * 4000 + users - 1) / users))
    ((per < 1500)) && per=1500
    ((per > 100000)) && per=100000
    extra=(--check-users "$per")
  fi
  say "authgate-load $flow, $users user(s)"
  local try
  for try in 1 2; do
    # The server's pool (16) and the tool's own connections.
    wait_for_slots 20
    rm -f "$OUT/$flow-$users.json"
    if "$LOAD" --flow "$flow" --users "$users" --duration "$SECS" \
        --database-url "$DATABASE_URL" --json "$OUT/$flow-$users.json" "${extra[@]}" \
        >"$OUT/$flow-$users.txt" 2>&1; then
      grep -E '^== ' "$OUT/$flow-$users.txt" | sed 's/^== //' | cut -d'|' -f4- | tr -d '\n'
      ((try > 1)) && printf ' (try %s)' "$try"
      echo
      return
    fi
    cp "$OUT/$flow-$users.txt" "$OUT/$flow-$users.failed-$try.txt"
  done
  echo "FAILED (see $OUT/$flow-$users.txt)"; failed=1
}

# argon2 NAME -> OUT/NAME.{txt,json}
argon2_run() {
  say "argon2 bound ($1)"
  if "$LOAD" --argon2-bound "$ARGON2_SECS" --json "$OUT/$1.json" >"$OUT/$1.txt" 2>&1; then
    sed 's/ (parameters.*//' "$OUT/$1.txt"
  else
    echo "FAILED (see $OUT/$1.txt)"; failed=1
  fi
}

echo "ratios: ${SECS} s per run, ${ARGON2_SECS} s per argon2 bound, 1 and $MANY users;" \
  "pgbench and authgate on the same PostgreSQL, $PGHOST:$PGPORT; raw output in $OUT"
started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# Each ratio's figures are taken next to each other: the machine drifts.
# One client's latency is mostly the commit's fsync on a shared disk and moves
# with other people's I/O: taken before and after the 1-user runs.
pgbench_run 1
for flow in code-check check login 2fa-login; do load_run "$flow" 1; done
pgbench_run 1 -after
pgbench_run "$MANY"
for flow in code-check check 2fa-login; do load_run "$flow" "$MANY"; done
argon2_run argon2-before
load_run login "$MANY"
argon2_run argon2-after
echo "runs took $(($(date +%s) - started)) s; load average before: $load_before, after: $(cut -d' ' -f1-3 /proc/loadavg)"

{
  echo
  echo "authgate ratios, $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n) ($(nproc) cores)," \
    "code $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock migrations 2>/dev/null || echo '+changes')," \
    "$("$PSQL" -d postgres -Atqc 'SHOW server_version' 2>/dev/null | sed 's/^/PostgreSQL /; s/ (.*//')" \
    "at $PGHOST:$PGPORT for pgbench and authgate, $SECS s per run," \
    "load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
  echo
  python3 scripts/bench/ratios_table.py "$OUT" "$MANY"
} | tee "$OUT/table.md"
table=$?
if ((failed)); then
  echo "ratios.sh: a run failed; its output is in $OUT" >&2
  exit 1
fi
if [[ "${STRICT:-0}" == 1 ]] && grep -q '\*\*missed\*\*' "$OUT/table.md"; then exit 3; fi
exit "$table"
