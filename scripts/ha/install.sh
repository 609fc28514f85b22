#!/usr/bin/env bash
# Installs what scripts/ha/up.sh runs (issue #19): patroni, etcd (etcd-server +
# etcd-client), pgbouncer and haproxy, from Debian packages. Idempotent: does
# nothing when all are there. Debian's maintainer scripts would start each
# package's system service (etcd on 2379, pgbouncer on 6432, haproxy, patroni);
# the cluster runs its own instances under HA_DIR instead, so a temporary
# /usr/sbin/policy-rc.d refuses every start (exit 101) during the install and
# any service that got started anyway is stopped. Needs root on Debian 12.
#   bash scripts/ha/install.sh
set -euo pipefail

# package -> a command it provides
declare -A need=(
  [patroni]=/usr/bin/patroni
  [etcd-server]=/usr/bin/etcd
  [etcd-client]=/usr/bin/etcdctl
  [pgbouncer]=/usr/sbin/pgbouncer
  [haproxy]=/usr/sbin/haproxy
)
missing=()
for p in patroni etcd-server etcd-client pgbouncer haproxy; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      && [ -x "${need[$p]}" ]; then
    echo "install: $p already installed ($(dpkg-query -W -f='${Version}' "$p"))"
  else
    missing+=("$p")
  fi
done
# python3-psycopg2 is patroni's driver (a Depends, but say so if absent), and
# pg_rewind / pg_basebackup come from postgresql-15.
for p in python3-psycopg2 postgresql-15 postgresql-client-15; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install: nothing to do"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install: missing packages (${missing[*]}) and not root: run as root or install them" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
if [ -e "$policy" ]; then
  # Someone else's policy: keep it, put it back afterwards.
  cp -a "$policy" "$policy.ha-install-saved"
fi
restore_policy() {
  if [ -e "$policy.ha-install-saved" ]; then
    mv -f "$policy.ha-install-saved" "$policy"
  else
    rm -f "$policy"
  fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# scripts/ha/install.sh: no service starts during the install\nexit 101\n' >"$policy"
chmod 755 "$policy"
echo "install: $policy refuses service starts during the install"

export DEBIAN_FRONTEND=noninteractive
echo "install: apt-get update"
apt-get update -qq
echo "install: apt-get install ${missing[*]}"
apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" >/dev/null

# Belt and braces: a service that started anyway (no policy-rc.d support in
# some init path) is stopped and disabled, so it holds no port of ours and
# does not come back at boot.
for svc in etcd pgbouncer haproxy patroni; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl stop "$svc" && echo "install: stopped system service $svc"
    fi
    if systemctl is-enabled --quiet "$svc" 2>/dev/null; then
      systemctl disable --quiet "$svc" && echo "install: disabled system service $svc"
    fi
  fi
  case "$svc" in
    etcd) pat=/usr/bin/etcd ;; pgbouncer) pat=/usr/sbin/pgbouncer ;;
    haproxy) pat=/usr/sbin/haproxy ;; patroni) pat=/usr/bin/patroni ;;
  esac
  # Only a daemon started from the system config, never one of ours (those run
  # with a config under an HA_DIR): match the system config paths exactly.
  for pid in $(pgrep -x "$(basename "$pat")" 2>/dev/null || true); do
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    case "$cmd" in
      *"/etc/pgbouncer/"*|*"/etc/haproxy/"*|*"/etc/patroni/"*|"$pat "|"/usr/bin/etcd "*)
        case "$cmd" in *--config-file*|*/ha/*) continue ;; esac
        kill "$pid" 2>/dev/null && echo "install: stopped $svc started by its package (pid $pid)" ;;
    esac
  done
done
for p in "${missing[@]}"; do
  echo "install: installed $p $(dpkg-query -W -f='${Version}' "$p")"
done
