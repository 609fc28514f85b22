# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are for the scripts that source this
# Shared by scripts/ha/{up,down,ctl}.sh (sourced, not run): where the cluster
# lives (HA_DIR, default ./var/ha), which loopback ports it uses (from
# HA_PORT_BASE, default 7400), how a daemon is started as the postgres account
# with a pid file, and how Patroni's REST /cluster is read.
HA_DIR="${HA_DIR:-./var/ha}"
HA_DIR="$(realpath -m "$HA_DIR")"
HA_PORT_BASE="${HA_PORT_BASE:-7400}"
case "$HA_PORT_BASE" in ''|*[!0-9]*) echo "HA_PORT_BASE must be a number, got '$HA_PORT_BASE'" >&2; exit 2 ;; esac
if [ -f "$HA_DIR/port_base" ]; then
  # An existing cluster keeps its ports: etcd and the data directories remember them.
  HA_PORT_BASE="$(cat "$HA_DIR/port_base")"
fi
B=$HA_PORT_BASE
ETCD_PORT=$B ETCD_PEER_PORT=$((B + 1))
PG_PORTS=($((B + 10)) $((B + 11)) $((B + 12)))
REST_PORTS=($((B + 20)) $((B + 21)) $((B + 22)))
PROXY_PORT=$((B + 30)) PROXY_STATS_PORT=$((B + 31))
POOLER_PORT=$((B + 40))
NODES=(node1 node2 node3)
SCOPE=authgate-ha
PGBIN=/usr/lib/postgresql/15/bin
PY=/usr/bin/python3   # Debian's, whatever python3 is first on PATH
ALL_PORTS=("$ETCD_PORT" "$ETCD_PEER_PORT" "${PG_PORTS[@]}" "${REST_PORTS[@]}" "$PROXY_PORT" "$PROXY_STATS_PORT" "$POOLER_PORT")

# PostgreSQL and Patroni refuse to run as root: as root, everything runs as postgres.
if [ "$(id -u)" -eq 0 ]; then
  RUN_AS=postgres
  AS_OWNER=(runuser -u postgres --)
else
  RUN_AS="$(id -un)"
  AS_OWNER=()
fi
# From / : the daemons and PostgreSQL's tools change back to the starting
# folder, which postgres may not enter (a checkout under /root, a 0700 temp dir).
as_owner() { (cd / && "${AS_OWNER[@]}" "$@"); }

# start_daemon NAME LOGFILE CMD...: runs CMD in the background, detached, as the
# owner, stdout+stderr appended to LOGFILE; the shell writes its own pid and
# then execs CMD, so $HA_DIR/run/NAME.pid holds the daemon's pid itself.
start_daemon() {
  local name=$1 log=$2; shift 2
  mkdir -p "$HA_DIR/run"
  # shellcheck disable=SC2016
  (cd / && exec setsid nohup "${AS_OWNER[@]}" sh -c 'echo $$ >"$0"; exec "$@"' "$HA_DIR/run/$name.pid" "$@") \
    </dev/null >>"$log" 2>&1 &
  local i
  for i in $(seq 50); do [ -s "$HA_DIR/run/$name.pid" ] && return 0; sleep 0.1; done
  echo "could not start $name (see $log)" >&2; return 1
}

# pid_alive NAME: the pid in run/NAME.pid is a live process.
pid_of() { [ -s "$HA_DIR/run/$1.pid" ] && cat "$HA_DIR/run/$1.pid"; }
pid_alive() { local p; p=$(pid_of "$1") && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

# cluster_json: Patroni's /cluster from the first REST port that answers.
cluster_json() {
  local r
  for r in "${REST_PORTS[@]}"; do
    curl -fsS --max-time 2 "http://127.0.0.1:$r/cluster" 2>/dev/null && return 0
  done
  return 1
}
# members_table: "name role state lag" lines, from /cluster.
members_table() {
  cluster_json | "$PY" -c '
import json, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
for m in json.load(sys.stdin)["members"]:
    print(m["name"], m["role"], m.get("state", "?") or "?", m.get("lag", "-"))'
}
leader_name() { members_table 2>/dev/null | awk '$2 == "leader" && $3 == "running" {print $1; f=1} END {exit !f}'; }
node_index() { local i; for i in 0 1 2; do [ "${NODES[$i]}" = "$1" ] && { echo "$i"; return 0; }; done; return 1; }

# secrets: generated once per HA_DIR (hex: safe in a URL).
load_secrets() {
  # shellcheck disable=SC1091
  . "$HA_DIR/secrets"
}

# start_pgbouncer NAME INI: PgBouncer in the foreground under start_daemon
# (up.sh, ctl.sh restart-pooler, bench.sh's transaction-mode copy).
start_pgbouncer() {
  start_daemon "$1" "$HA_DIR/log/$1.log" /usr/sbin/pgbouncer "$2"
}
# env_urls: the URLs up.sh wrote.
load_env() {
  [ -s "$HA_DIR/env" ] || { echo "no $HA_DIR/env: is the cluster up (scripts/ha/up.sh)?" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$HA_DIR/env"
}
# sql URL SQL: one statement, bounded (a commit waiting for a sync standby that
# is gone would otherwise hang), the value on stdout, nothing on failure.
sql() { PGCONNECT_TIMEOUT=2 timeout 5 "$PGBIN/psql" "$1" -XAtq -v ON_ERROR_STOP=1 -c "$2" 2>/dev/null; }
# can_write URL: a transaction that needs a transaction id commits (fails on a
# standby, waits for the sync standby on a synchronous primary).
can_write() { [ -n "$(sql "$1" 'SELECT txid_current()')" ]; }
