#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time from the committed corpus; any
# crash, panic, leak or timeout fails the script (cargo fuzz exits non-zero). See README.md.
#
#   fuzz/run-ci.sh                          (scripts/test.sh runs exactly this)
#   BEACON_FUZZ_SECS=600 fuzz/run-ci.sh     (longer runs, same targets)
#   BEACON_FUZZ_SANITIZER=address fuzz/run-ci.sh
set -euo pipefail
cd "$(dirname "$0")"

secs="${BEACON_FUZZ_SECS:-20}"
sanitizer="${BEACON_FUZZ_SANITIZER:-none}"
fuzz=(cargo +nightly fuzz)

# Outside the root workspace, so the root's `cargo fmt --all` does not see these files.
cargo fmt --manifest-path Cargo.toml -- --check
"${fuzz[@]}" build --sanitizer "$sanitizer"
for target in $("${fuzz[@]}" list); do
  # New finds go to a scratch directory, so CI reads the committed corpus and never edits it.
  scratch="$(mktemp -d)"
  echo "fuzz: $target for ${secs}s (sanitizer: $sanitizer)"
  if ! "${fuzz[@]}" run --sanitizer "$sanitizer" "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$scratch.log"; then
    tail -n 60 "$scratch.log"
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/ (see fuzz/README.md)" >&2
    rm -rf "$scratch"
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$scratch.log" | sed "s/^/  $target /" || true
  rm -rf "$scratch" "$scratch.log"
done
echo "fuzz: every target ran ${secs}s without a crash"
