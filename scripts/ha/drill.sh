#!/usr/bin/env bash
# One fault drill on the cluster of scripts/ha/up.sh (started if not running),
# with the write outage of each fault measured through HAProxy and through
# PgBouncer: two probe loops commit a transaction every 0.1 s through each, and
# the outage is the longest gap between two successful commits.
#   1. ctl.sh kill-leader + wait-leader-change, then wait-healthy (the old
#      leader rejoins as a replica)
#   2. ctl.sh switchover
#   3. ctl.sh kill-leader-node (Patroni dies too: the leader key must expire,
#      up to ttl), wait-leader-change, start-node, wait-healthy
#   4. ctl.sh restart-pooler 3
#   bash scripts/ha/drill.sh [--purge]     (--purge: down.sh --purge at the end)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ctl() { bash "$here/ctl.sh" "$@"; }
bash "$here/up.sh" >/dev/null
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
load_env
work="$(mktemp -d)"
trap 'echo "drill: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
probe_pids=()
stop_probes() {
  if [ ${#probe_pids[@]} -gt 0 ]; then kill "${probe_pids[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  probe_pids=()
}
trap 'stop_probes; rm -rf "$work"' EXIT
now() { date +%s.%N; }
start_probes() {
  local name url
  for name in proxy pooler; do
    [ $name = proxy ] && url=$HA_PROXY_URL || url=$HA_POOLER_URL
    : >"$work/$name"
    ( while :; do can_write "$url" && now >>"$work/$name"; sleep 0.1; done ) &
    probe_pids+=($!)
  done
}
# gap NAME: the longest time between two successful commits of a probe.
gap() { awk 'NR > 1 && $1 - p > m {m = $1 - p} {p = $1} END {printf "%.1f", m}' "$work/$1"; }

ctl wait-healthy 120 >/dev/null
echo "drill: members before:"; ctl members | sed 's/^/  /'
start_probes; sleep 2
t0=$(now)
old=$(ctl kill-leader 2>/dev/null)
new=$(ctl wait-leader-change "$old" 120)
t1=$(now)
echo "drill: killed the postmaster of $old; $new leads and takes writes through HAProxy after $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s"
sleep 3; stop_probes
echo "drill: failover write outage: HAProxy $(gap proxy) s, PgBouncer $(gap pooler) s"
t0=$(now)
ctl wait-healthy 180 >/dev/null
echo "drill: healthy again (old leader $old rejoined) $(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}') s later:"
ctl members | sed 's/^/  /'

start_probes; sleep 2
t0=$(now)
new=$(ctl switchover 2>"$work/switchover.err") || { cat "$work/switchover.err" >&2; exit 1; }
t1=$(now)
sleep 3; stop_probes
echo "drill: switchover to $new done in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s; write outage: HAProxy $(gap proxy) s, PgBouncer $(gap pooler) s"
ctl wait-healthy 120 >/dev/null && echo "drill: healthy after the switchover"

start_probes; sleep 2
t0=$(now)
old=$(ctl kill-leader-node 2>/dev/null)
new=$(ctl wait-leader-change "$old" 120)
t1=$(now)
sleep 3; stop_probes
echo "drill: killed Patroni and the postmaster of $old (a lost machine); $new takes writes through HAProxy after $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s; write outage: HAProxy $(gap proxy) s, PgBouncer $(gap pooler) s"
ctl start-node "$old" >/dev/null
t0=$(now)
ctl wait-healthy 180 >/dev/null
echo "drill: $old started again, healthy $(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}') s later"

t0=$(now)
ctl restart-pooler 3 >/dev/null 2>&1
echo "drill: restart-pooler 3: PgBouncer answers again $(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}') s after it was killed"
if [ "${1:-}" = --purge ]; then bash "$here/down.sh" --purge; fi
