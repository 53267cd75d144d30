#!/usr/bin/env bash
# Issue 8's one benchmark command: builds the release agent, then runs benches/budget.rs against
# ec2sim and this machine's Docker with that binary, and prints one table (figure, measured
# value, budget, pass/miss, method), with the official agent idling beside it (built by
# scripts/official-agent.sh: Go 1.23 from Debian backports, about 4 minutes the first time).
# About 20 minutes with the default 10-minute idle window; BENCH_IDLE_SECS=60 shortens it. Sets up the test world first (see scripts/world.sh), so it
# needs root like scripts/test.sh. Run scripts/bench.sh from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/world.sh
source scripts/official-agent.sh
world_packages
world_venv
world_docker
world_images
world_awscli_image

# Issue 23: the official agent, built offline from its source mirror (cached in target/), idles
# beside ecs-hostd in the same windows. OFFICIAL_AGENT=skip leaves it out (its rows then say
# "not measured").
if [ "${OFFICIAL_AGENT:-}" != skip ]; then
  if ECS_HOSTD_OFFICIAL_AGENT=$(official_agent_build); then
    export ECS_HOSTD_OFFICIAL_AGENT
  else
    log "the official agent could not be built (see above): its rows will say not measured"
  fi
fi

log "release build of the agent"
cargo build --release --bin ecs-hostd

# The driver itself is built in the test profile (its own speed is not measured; an LTO build of
# it would add minutes); the agent it measures is the release binary.
log "budget bench (idle window ${BENCH_IDLE_SECS:-600} s)"
ECS_HOSTD_BIN="$ROOT/target/release/ecs-hostd" cargo test --bench budget -- --bench
