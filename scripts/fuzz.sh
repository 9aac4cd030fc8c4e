#!/usr/bin/env bash
# Run every coverage-guided fuzz target (fuzz/fuzz_targets, cargo-fuzz + libFuzzer) for
# SECONDS each (default 60), starting from the checked-in seeds (fuzz/seeds/TARGET) and
# the corpus kept in fuzz/corpus/TARGET. A crash stops the run with the target's name;
# libFuzzer leaves the input in fuzz/artifacts/TARGET/: add it as a regression test.
#   scripts/fuzz.sh            # 60 s a target
#   scripts/fuzz.sh 600        # the 10-minute runs bench/RESULTS.md records
#   FUZZ_TARGETS="rtcp sdp" scripts/fuzz.sh 30
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz on the $toolchain toolchain (scripts/install-deps.sh installs both)" >&2
  exit 1
fi
targets=${FUZZ_TARGETS:-$(cargo "+$toolchain" fuzz list)}
mkdir -p logs
echo "fuzz.sh: building the targets (AddressSanitizer, release)"
cargo "+$toolchain" fuzz build -O
failed=()
for t in $targets; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "fuzz.sh: $t for ${secs}s"
  if cargo "+$toolchain" fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"logs/$t.log" 2>&1; then
    # The last status line: executions, coverage, corpus size.
    grep -E '^#[0-9]+' "logs/$t.log" | tail -1 | sed "s/^/  $t: /" || true
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "logs/$t.log" | sed "s/^/  /" || true
  else
    echo "fuzz.sh: $t FAILED (a crash or a leak); tail of fuzz/logs/$t.log:" >&2
    tail -30 "logs/$t.log" >&2
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz.sh: failing targets: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: every target ran ${secs}s without a crash"
