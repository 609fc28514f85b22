#!/usr/bin/env bash
# The HA fault test (tests/faults/ha.rs): installs Patroni, etcd, HAProxy and
# PgBouncer from Debian's packages if missing (scripts/ha/install.sh), then runs
# the test, which brings a cluster up in a temporary folder, runs three authgate
# processes under load through a failover, a switchover and a pooler restart,
# prints the error windows and stops everything it started. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/ha/install.sh
# --nocapture: the figures (failover time, error windows) are the point.
timeout --kill-after=30 900 cargo test --test faults -- --ignored --exact \
  ha::failover_switchover_and_pooler_restart_under_load --nocapture
