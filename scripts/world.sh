# shellcheck shell=bash
# The local test world: a real Docker engine, offline test images, and ec2sim's Python venv.
# Sourced by scripts/demo.sh and scripts/test.sh; run directly, it sets the world up. Idempotent:
# it installs only what is missing, reuses a running dockerd, and caches the venv (keyed by
# tests/ec2sim/requirements.txt) and the images on the machine.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ECS_HOSTD_CACHE:-$HOME/.cache/ecs-hostd}"
REQS="$ROOT/tests/ec2sim/requirements.txt"
TEST_IMAGE="ecs-hostd-test/busybox:latest"
# The official agent's namespace pause image name (ECS_HOSTD_PAUSE_IMAGE's default), built by world_images.
PAUSE_IMAGE="amazon/amazon-ecs-pause:0.1.0"

log() { printf '\033[1m[world]\033[0m %s\n' "$*" >&2; }

world_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null || missing+=(busybox-static)
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
    # Its own session, so it outlives the shell (and the terminal session) that started it.
    setsid dockerd >"$CACHE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 200); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start; see $CACHE/dockerd.log"; tail -20 "$CACHE/dockerd.log" >&2; return 1; }
  fi
  world_orphan_cgroups
}

# The systemd "instance" of the tests mounts the cgroup v1 controllers the host leaves unmounted
# (perf_event, net_cls,net_prio, hugetlb here). The kernel keeps such a hierarchy after the
# instance is gone, and while it exists containerd finds a controller it cannot see mounted and
# `docker stats` reads 0B for every container. tests/systemd/common.rs calls this when its last
# instance stops, and world_setup for a machine a killed test run left so. Each hierarchy is mounted
# privately, its empty cgroups removed deepest first, and unmounted: the kernel then destroys it.
world_orphan_cgroups() {
  [ -r /proc/cgroups ] || return 0
  [ -z "$(docker ps -q --filter label=ecs-hostd.test=systemd 2>/dev/null)" ] || return 0
  local h ctrls first d
  for h in $(awk '!/^#/ && $2 != 0 {print $2}' /proc/cgroups | sort -u); do
    ctrls=$(awk -v h="$h" '!/^#/ && $2 == h {print $1}' /proc/cgroups | paste -sd, -)
    first=${ctrls%%,*}
    awk -v c="$first" '/ - cgroup / { n = split($NF, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) f = 1 }
      END { exit !f }' /proc/self/mountinfo && continue
    # A removed cgroup stays among its parent's children until the kernel frees it, and the
    # hierarchy dies only when unmounted without children: unmount after a pause, and again
    # until it is gone.
    d=$(mktemp -d)
    for _ in 1 2 3 4 5; do
      mount -t cgroup -o "$ctrls" none "$d" 2>/dev/null || break
      find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null || true
      sleep 0.5
      umount "$d"
      sleep 0.5
      awk -v h="$h" '!/^#/ && $2 == h { f = 1 } END { exit !f }' /proc/cgroups || {
        log "released the cgroup hierarchy $ctrls that only a stopped instance mounted"
        break
      }
    done
    rmdir "$d"
  done
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
  # The namespace pause image of pidMode/ipcMode task, under the official agent's name (ecs-hostd
  # never pulls it): the test image, blocking in one sleep until SIGTERM, on which it exits 0.
  if ! docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
    log "building $PAUSE_IMAGE from $TEST_IMAGE"
    local cid
    cid=$(docker create "$TEST_IMAGE")
    docker commit --change 'ENTRYPOINT ["/bin/sh", "-c", "trap \"exit 0\" TERM; sleep 2147483647 & wait"]' \
      --change 'CMD []' "$cid" "$PAUSE_IMAGE" >/dev/null
    docker rm "$cid" >/dev/null
  fi
}

# The booted-systemd "instance" image for tests/systemd_instance.rs (debootstrap, once per
# machine, about 4 minutes; reused afterwards). Sets ECS_HOSTD_SYSTEMD_IMAGE.
world_systemd_image() {
  ECS_HOSTD_SYSTEMD_IMAGE=$(bash "$ROOT/tests/systemd/build-image.sh")
  export ECS_HOSTD_SYSTEMD_IMAGE
}

# A minimal Debian image for the package tests (tests/package_*.rs): dpkg install, upgrade, remove
# and purge in a fresh Debian without systemd as PID 1. Built offline-friendly with debootstrap
# from the machine's own Debian mirror, imported with `docker import`, tagged with a hash of its
# recipe and cached in the local engine (a few minutes, once per machine). systemd and docker.io
# are included because the package depends on them.
DEBIAN_RECIPE="debootstrap --variant=minbase --include=systemd,docker.io bookworm (recipe 1)"

world_debian_mirror() {
  local m
  m=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
    | awk '{print $2}' | head -1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

world_debian_image() {
  local hash dir mirror
  hash=$(printf '%s' "$DEBIAN_RECIPE" | sha256sum | cut -c1-12)
  ECS_HOSTD_DEBIAN_IMAGE="ecs-hostd-test/debian-minbase:$hash"
  if ! docker image inspect "$ECS_HOSTD_DEBIAN_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    mirror=$(world_debian_mirror)
    mkdir -p "$CACHE"
    dir=$(mktemp -d)
    log "building $ECS_HOSTD_DEBIAN_IMAGE with debootstrap from $mirror (a few minutes, once per machine)"
    if ! debootstrap --variant=minbase --include=systemd,docker.io bookworm "$dir" "$mirror" >"$CACHE/debootstrap.log" 2>&1; then
      log "debootstrap failed; see $CACHE/debootstrap.log"; tail -5 "$CACHE/debootstrap.log" >&2; rm -rf "$dir"; return 1
    fi
    : >"$dir/etc/machine-id"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | docker import --change 'CMD ["/bin/bash"]' - "$ECS_HOSTD_DEBIAN_IMAGE" >/dev/null
    rm -rf "$dir"
  fi
  export ECS_HOSTD_DEBIAN_IMAGE
}

# Images with real AWS clients for the task-role, awslogs and task-metadata tests. Built like the
# Debian image (debootstrap from the machine's Debian mirror, `docker import`, tagged with a hash of
# the recipe, once per machine, a lock against concurrent builders), plus PyPI for the OTel one.
#
# ecs-hostd-test/awscli:<hash> ($ECS_HOSTD_AWSCLI_IMAGE): Debian bookworm with awscli (2.9.19, AWS
# CLI v2), python3-boto3 (1.26.27, botocore 1.29.27), curl, wget, ca-certificates. Both SDKs take
# credentials from AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (http://169.254.170.2 + it) or _FULL_URI
# (hosts 169.254.170.2, localhost, 127.0.0.1 only); neither knows AWS_ENDPOINT_URL: pass
# --endpoint-url (CLI) or endpoint_url= (boto3), and a region (--region / AWS_DEFAULT_REGION).
# python3-cffi-backend is named because debootstrap does not resolve the virtual packages
# python3-cryptography depends on (python3-cffi-backend-api-min/max).
AWSCLI_PACKAGES="awscli,python3-boto3,python3-cffi-backend,curl,wget,ca-certificates"
AWSCLI_RECIPE="debootstrap --variant=minbase --include=$AWSCLI_PACKAGES bookworm (recipe 1)"

world_awscli_image() {
  local hash
  hash=$(printf '%s' "$AWSCLI_RECIPE" | sha256sum | cut -c1-12)
  ECS_HOSTD_AWSCLI_IMAGE="ecs-hostd-test/awscli:$hash"
  export ECS_HOSTD_AWSCLI_IMAGE
  docker image inspect "$ECS_HOSTD_AWSCLI_IMAGE" >/dev/null 2>&1 && return 0
  mkdir -p "$CACHE"
  (
    exec 8>"$CACHE/awscli-image.lock"
    flock 8
    docker image inspect "$ECS_HOSTD_AWSCLI_IMAGE" >/dev/null 2>&1 && exit 0
    command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    local mirror dir started
    mirror=$(world_debian_mirror)
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    started=$SECONDS
    log "building $ECS_HOSTD_AWSCLI_IMAGE with debootstrap from $mirror (a few minutes, once per machine)"
    if ! debootstrap --variant=minbase --include="$AWSCLI_PACKAGES" bookworm "$dir" "$mirror" >"$CACHE/debootstrap-awscli.log" 2>&1; then
      log "debootstrap failed; see $CACHE/debootstrap-awscli.log"; tail -5 "$CACHE/debootstrap-awscli.log" >&2; exit 1
    fi
    : >"$dir/etc/machine-id"
    rm -rf "$dir"/var/cache/apt/* "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["/bin/bash"]' - "$ECS_HOSTD_AWSCLI_IMAGE" >/dev/null
    docker run --rm --network none "$ECS_HOSTD_AWSCLI_IMAGE" sh -c 'aws --version && python3 -c "import boto3" && curl --version >/dev/null && wget --version >/dev/null' >&2 \
      || { log "$ECS_HOSTD_AWSCLI_IMAGE does not work; removing it"; docker rmi "$ECS_HOSTD_AWSCLI_IMAGE" >/dev/null; exit 1; }
    log "built $ECS_HOSTD_AWSCLI_IMAGE in $((SECONDS - started)) s"
  )
}

# ecs-hostd-test/otel:<hash> ($ECS_HOSTD_OTEL_IMAGE): the awscli image plus the PyPI packages of
# tests/images/otel/requirements.txt in /usr/local/lib/python3.11/dist-packages and
# /usr/local/bin/ecs-detect (tests/images/otel/ecs-detect): runs OpenTelemetry's
# AwsEcsResourceDetector and prints the detected resource attributes as JSON. The wheels are
# fetched with the ec2sim venv's pip (world_venv) for CPython 3.11 on x86_64.
world_otel_image() {
  local hash otel_dir="$ROOT/tests/images/otel"
  world_awscli_image
  hash=$( { echo "$ECS_HOSTD_AWSCLI_IMAGE otel (recipe 1)"; cat "$otel_dir/requirements.txt" "$otel_dir/ecs-detect"; } | sha256sum | cut -c1-12)
  ECS_HOSTD_OTEL_IMAGE="ecs-hostd-test/otel:$hash"
  export ECS_HOSTD_OTEL_IMAGE
  docker image inspect "$ECS_HOSTD_OTEL_IMAGE" >/dev/null 2>&1 && return 0
  (
    exec 8>"$CACHE/otel-image.lock"
    flock 8
    docker image inspect "$ECS_HOSTD_OTEL_IMAGE" >/dev/null 2>&1 && exit 0
    local dir container started=$SECONDS
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"; [ -z "${container:-}" ] || docker rm -f "$container" >/dev/null 2>&1' EXIT
    log "building $ECS_HOSTD_OTEL_IMAGE (PyPI: $(grep -c '^[a-z]' "$otel_dir/requirements.txt") packages)"
    mkdir -p "$dir/usr/local/lib/python3.11/dist-packages" "$dir/usr/local/bin"
    "${ECS_HOSTD_PYTHON:?run world_venv first}" -m pip install -q --disable-pip-version-check --no-deps --no-compile \
      --target "$dir/usr/local/lib/python3.11/dist-packages" --only-binary=:all: \
      --python-version 3.11 --implementation cp --abi cp311 --platform manylinux2014_x86_64 \
      -r "$otel_dir/requirements.txt" >&2
    rm -rf "$dir/usr/local/lib/python3.11/dist-packages/bin"
    install -m 0755 "$otel_dir/ecs-detect" "$dir/usr/local/bin/ecs-detect"
    container=$(docker create --network none "$ECS_HOSTD_AWSCLI_IMAGE" true)
    tar -C "$dir" -c --owner=0 --group=0 usr | docker cp - "$container:/"
    docker commit --change 'CMD ["/usr/local/bin/ecs-detect"]' "$container" "$ECS_HOSTD_OTEL_IMAGE" >/dev/null
    # Without ECS metadata the detector returns an empty resource: "{}" and exit status 1.
    [ "$(docker run --rm --network none "$ECS_HOSTD_OTEL_IMAGE" ecs-detect 2>/dev/null || true)" = "{}" ] \
      || { log "$ECS_HOSTD_OTEL_IMAGE does not work; removing it"; docker rmi "$ECS_HOSTD_OTEL_IMAGE" >/dev/null; exit 1; }
    log "built $ECS_HOSTD_OTEL_IMAGE in $((SECONDS - started)) s"
  )
}

# Package tools for tests/package_*.rs: rpm (rpm -qlp, rpm -qp --scripts).
world_package_tools() {
  command -v rpm >/dev/null 2>&1 || { log "installing rpm"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null; }
}

world_setup() {
  world_packages
  world_venv
  world_docker
  world_images
  world_systemd_image
  world_package_tools
  world_debian_image
  world_awscli_image
  world_otel_image
}

# What scripts/demo.sh needs and nothing more: Docker, the busybox test image and ec2sim's venv.
# The systemd and Debian images (debootstrap, minutes each on a fresh machine), the registry and the
# package tools are for the tests only; world_setup builds them.
world_setup_demo() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  # grep reads the whole list: with `grep -q` under pipefail, busybox could die of SIGPIPE after
  # the match and the package would count as missing.
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -x httpd >/dev/null || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
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

# Executed rather than sourced (`bash scripts/world.sh`): set the world up.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  world_setup
fi
