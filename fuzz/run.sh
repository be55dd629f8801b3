#!/usr/bin/env bash
# Run every fuzz target for a bounded time and report executions and findings.
#   fuzz/run.sh [SECONDS_PER_TARGET]   (default 30; `make fuzz`, and `make test` runs it)
# Needs cargo-fuzz (infra/bootstrap.sh --test installs it). Built without a sanitizer (the
# workspace forbids unsafe code; what is looked for is panics, overflows and runaway memory),
# with debug assertions on so integer overflow panics too. A crash leaves its input under
# fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
command -v cargo-fuzz >/dev/null 2>&1 || {
  echo "fuzz: cargo-fuzz is missing; install it with: cargo install cargo-fuzz --locked" >&2
  exit 1
}
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/tidecast/fuzz-target}"
# the corpus outlives clones (CI runs on a fresh one), so each run starts where the last ended
corpus_dir="${FUZZ_CORPUS_DIR:-$HOME/.cache/tidecast/fuzz-corpus}"
export RUSTC_BOOTSTRAP=1   # cargo-fuzz passes -Z flags; the machine has one stable toolchain
targets=(rtmp_session rtmp_handshake flv_tags http_queries signaling sfu_media turn call_events)
flags=(--release --debug-assertions --sanitizer none --target-dir "$target_dir")
cargo fuzz build "${flags[@]}"
status=0
for t in "${targets[@]}"; do
  mkdir -p "$corpus_dir/$t" "artifacts/$t"
  log=$(mktemp)
  if cargo fuzz run "${flags[@]}" "$t" "$corpus_dir/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo "?")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || echo "?")
    echo "fuzz $t: ${runs} executions in ${seconds}s, coverage ${cov} edges, no findings"
  else
    echo "fuzz $t: FINDING (input saved under fuzz/artifacts/$t/):" >&2
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20 >&2 || tail -n 40 "$log" >&2
    status=1
  fi
  rm -f "$log"
done
exit $status
