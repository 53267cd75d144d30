# shellcheck shell=bash
# The local test world: a real Docker engine, offline test images, and ec2sim's Python venv.
# Sourced by scripts/demo.sh and scripts/test.sh. Idempotent: it installs only what is missing,
# reuses a running dockerd, and caches the venv (keyed by tests/ec2sim/requirements.txt) and the
# images on the machine.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ECS_HOSTD_CACHE:-$HOME/.cache/ecs-hostd}"
REQS="$ROOT/tests/ec2sim/requirements.txt"
TEST_IMAGE="ecs-hostd-test/busybox:latest"

log() { printf '\033[1m[world]\033[0m %s\n' "$*" >&2; }

world_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || missing+=(busybox-static)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  # Local registry and htpasswd for the engine's pull/auth tests.
  [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
  command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

world_venv() {
  local hash
  hash=$(sha256sum "$REQS" | cut -c1-12)
  VENV="$CACHE/venv-$hash"
  if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
    log "creating the ec2sim venv in $VENV (about a minute)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS"
    touch "$VENV/.complete"
  fi
  export ECS_HOSTD_PYTHON="$VENV/bin/python"
}

world_docker() {
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p "$CACHE"
    (dockerd >"$CACHE/dockerd.log" 2>&1 &)
    for _ in $(seq 200); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start; see $CACHE/dockerd.log"; tail -20 "$CACHE/dockerd.log" >&2; return 1; }
  fi
}

# A static busybox image (no registry is reachable): httpd, sh, sleep and every other applet.
world_images() {
  if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
    log "building $TEST_IMAGE offline from busybox-static"
    local dir
    dir=$(mktemp -d)
    mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/www"
    cp /bin/busybox "$dir/bin/busybox"
    for a in $("$dir/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$dir/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$dir/etc/passwd"
    echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >>"$dir/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$dir/etc/group"
    echo 'hello from ecs-hostd' >"$dir/www/index.html"
    tar -C "$dir" -c . | docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$TEST_IMAGE" >/dev/null
    rm -rf "$dir"
  fi
  export ECS_HOSTD_TEST_IMAGE="$TEST_IMAGE"
}

world_setup() {
  world_packages
  world_venv
  world_docker
  world_images
}

# Starts ec2sim in the background; sets EC2SIM_PORT and EC2SIM_PID.
world_ec2sim() {
  local ready
  ready=$(mktemp -u)
  "$ECS_HOSTD_PYTHON" "$ROOT/tests/ec2sim/ec2sim.py" --port 0 --ready-file "$ready" >"${EC2SIM_LOG:-$CACHE/ec2sim.log}" 2>&1 &
  EC2SIM_PID=$!
  for _ in $(seq 300); do [ -s "$ready" ] && break; sleep 0.1; done
  [ -s "$ready" ] || { log "ec2sim did not start; see ${EC2SIM_LOG:-$CACHE/ec2sim.log}"; return 1; }
  EC2SIM_PORT=$("$ECS_HOSTD_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$ready")
  rm -f "$ready"
  export EC2SIM_PORT EC2SIM_PID
}
