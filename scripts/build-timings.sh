#!/usr/bin/env bash
# Release build time of one or more commits, measured back to back in one
# sitting (this machine's speed swings between days: compare only figures from
# one run of this script).
#
#   bash scripts/build-timings.sh BEFORE AFTER [OUT_DIR]
#
# Each commit is checked out into a fresh folder with an empty target folder
# (the crates are already downloaded, so the network is not timed) and built
# with `cargo build --release --timings --bin authgate` (what the quick start's
# `cargo run --release` builds), then the other binaries on top. For each it
# prints the wall times, the number of crates compiled and the units that took
# longest, and keeps cargo's HTML report of the first build as
# OUT_DIR/build-timings-<commit>.html (default benches/results).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
out="${3:-benches/results}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for rev in "$1" "$2"; do
  sha="$(git rev-parse --short "$rev")"
  git worktree add -q --detach "$work/$sha" "$rev"
  # Download before the clock starts.
  (cd "$work/$sha" && cargo fetch --quiet)
done

for rev in "$1" "$2"; do
  sha="$(git rev-parse --short "$rev")"
  dir="$work/$sha"
  # First what `cargo run --release` (the quick start) builds, then the rest
  # of the binaries (the load tool) on top.
  start=$(date +%s.%N)
  (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build --release --timings --quiet --bin authgate)
  end=$(date +%s.%N)
  cp "$dir"/target/cargo-timings/cargo-timing.html "$out/build-timings-$sha.html"
  (cd "$dir" && CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet)
  all=$(date +%s.%N)
  python3 -c "import sys; print(f'$sha: the rest of the binaries took {float(sys.argv[2]) - float(sys.argv[1]):.0f} s more')" "$end" "$all"
  python3 - "$dir/target/cargo-timings/cargo-timing.html" "$sha" "$start" "$end" <<'EOF'
import json, re, sys
html, sha, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
units = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);\n", open(html).read(), re.S).group(1))
crates = {(u["name"], u["version"]) for u in units}
busy = sum(u["duration"] for u in units)
print(f"{sha}: `cargo run --release` builds in {end - start:.0f} s wall, {len(crates)} crates, {len(units)} units, {busy:.0f} s of unit time")
for u in sorted(units, key=lambda u: -u["duration"])[:12]:
    print(f"    {u['duration']:6.1f} s  {u['name']} {u['version']} {u.get('target', '').strip()}")
EOF
done
for rev in "$1" "$2"; do git worktree remove --force "$work/$(git rev-parse --short "$rev")"; done
