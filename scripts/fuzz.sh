#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ briefly; fails on the first crash.
#
#   bash scripts/fuzz.sh                 # every target, 20 s each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh            # longer runs
#   FUZZ_SECONDS=3600 bash scripts/fuzz.sh login_flow  # one target, an hour
#
# Only the stable toolchain is installed, so cargo-fuzz runs with
# RUSTC_BOOTSTRAP=1 (it needs -Zsanitizer / -Cinstrument-coverage flags).
# The sanitizer is off by default (FUZZ_SANITIZER=none): authgate forbids unsafe
# code, and an AddressSanitizer build of the whole dependency tree costs minutes
# of CI time; set FUZZ_SANITIZER=address for a longer, deeper run.
# A crash leaves its input under fuzz/artifacts/TARGET/; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-none}"
# FUZZ_BUILD=dev builds without optimisation: CI's short runs need a quick build
# more than fast executions; longer runs keep the optimised default.
build_flags=()
[ "${FUZZ_BUILD:-release}" = dev ] && build_flags+=(--dev)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "== building fuzz targets (sanitizer: $sanitizer)"
# One build of every target shares the dependency build; the runs below reuse it.
cargo fuzz build --fuzz-dir fuzz -s "$sanitizer" "${build_flags[@]}"

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t"
  # -rss_limit_mb bounds memory; -timeout flags any single input slower than 10 s.
  if ! cargo fuzz run --fuzz-dir fuzz -s "$sanitizer" "${build_flags[@]}" "$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 2>"$logs/$t.log"; then
    tail -n 40 "$logs/$t.log" >&2
    failed+=("$t")
  else
    grep -E "^stat::number_of_executed_units|Done [0-9]+ runs" "$logs/$t.log" | tail -n 1 || true
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crash or failure in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crash"
