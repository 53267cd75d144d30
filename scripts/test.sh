#!/usr/bin/env bash
# Runs every test: unit tests, ec2sim's own tests, and the integration tests against a real
# Docker engine and ec2sim. Installs and starts what is missing first (see scripts/world.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/world.sh
world_setup

log "ec2sim self-tests"
"$ECS_HOSTD_PYTHON" -m pytest -q -p no:cacheprovider tests/ec2sim

log "cargo test (unit + integration)"
cargo test --all-targets -- --test-threads="${TEST_THREADS:-4}"

# Remove anything a failed test left behind.
docker ps -aq --filter label=ecs-hostd.test | xargs -r docker rm -f >/dev/null 2>&1 || true
