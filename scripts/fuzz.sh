#!/usr/bin/env bash
# Fuzzes the ACS frame decoder for a bounded time (FUZZ_SECONDS, default 60) with cargo-fuzz
# (libFuzzer), seeded with the protocol fixtures. Installs what is missing: a nightly toolchain
# (rustup) and cargo-fuzz (cargo install --locked). Exits non-zero if the target crashes or
# cannot be built; crashing inputs land in fuzz/artifacts/acs_frame/.
#
# The same property ("no input makes the decoder or the handler panic") also runs on stable in
# the normal test suite: tests/acs_messages.rs, arbitrary_frames_never_panic.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_BUDGET="${FUZZ_SECONDS:-60}"
log() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }

if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

corpus=fuzz/corpus/acs_frame
mkdir -p "$corpus"
log "fuzzing acs_frame for ${SECONDS_BUDGET}s"
cd fuzz
# -rss_limit_mb: the decoder must not balloon on any input; -max_len: real frames are far below.
cargo +nightly fuzz run acs_frame "corpus/acs_frame" ../tests/data/acs/messages -- \
  -max_total_time="$SECONDS_BUDGET" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1
