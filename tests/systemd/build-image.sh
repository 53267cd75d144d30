#!/usr/bin/env bash
# Builds (once per machine) the Debian image whose booted systemd is the "instance" for the
# systemd tests (tests/systemd_*.rs): a real systemd 252 as PID 1, dbus, and Debian's docker.io
# managed by it, and ca-certificates as on every EC2 AMI (the AWS SDK refuses to start without
# root certificates). Offline apart from Debian's package archive (the mirror apt uses here).
#
# The image is tagged with a hash of its inputs (this script, suite, package list, mirror) and
# reused when present; a fresh machine builds it in about 4 minutes (570 MB). Prints the tag on
# stdout; everything else goes to stderr. Safe to run concurrently: a lock serialises builders.
#
# Usage: tests/systemd/build-image.sh            (prints e.g. ecs-hostd-test/systemd:3f2a...)
#   ECS_HOSTD_DEBIAN_MIRROR=http://...  overrides the mirror found in /etc/apt/sources.list*.
set -euo pipefail

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,docker.io,iproute2,ca-certificates
REPO=ecs-hostd-test/systemd
CACHE="${ECS_HOSTD_CACHE:-$HOME/.cache/ecs-hostd}"

log() { printf '[systemd-image] %s\n' "$*" >&2; }

# The Debian mirror apt already uses (deb822 .sources files or one-line sources.list).
find_mirror() {
  if [ -n "${ECS_HOSTD_DEBIAN_MIRROR:-}" ]; then
    echo "$ECS_HOSTD_DEBIAN_MIRROR"
    return
  fi
  local m
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
  if [ -z "$m" ]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) { print $i; exit } }')
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

MIRROR=$(find_mirror)
HASH=$( { cat "$0"; echo "$SUITE $PACKAGES $MIRROR"; } | sha256sum | cut -c1-16)
TAG="$REPO:$HASH"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/systemd-image.lock"
flock 9
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

DIR="$CACHE/systemd-rootfs-$HASH"
rm -rf "$DIR"
trap 'rm -rf "$DIR"' EXIT
log "debootstrap $SUITE from $MIRROR into $DIR (about 4 minutes)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$DIR" "$MIRROR" >"$CACHE/debootstrap-$HASH.log" 2>&1 || {
  log "debootstrap failed; see $CACHE/debootstrap-$HASH.log"
  tail -20 "$CACHE/debootstrap-$HASH.log" >&2
  exit 1
}

# A booted copy must generate its own machine id.
: >"$DIR/etc/machine-id"
rm -f "$DIR/var/lib/dbus/machine-id"
# No consoles or timers that only cost boot time in a container.
for u in getty@tty1.service console-getty.service apt-daily.timer apt-daily-upgrade.timer \
         e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$DIR/etc/systemd/system/$u"
done
# Keep the journal small and in memory.
mkdir -p "$DIR/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' >"$DIR/etc/systemd/journald.conf.d/test.conf"
rm -rf "$DIR/var/cache/apt/archives/"*.deb "$DIR/var/lib/apt/lists/"*

log "importing $TAG"
tar -C "$DIR" --numeric-owner -c . | docker import \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change 'ENV container=docker' \
  --change "LABEL ecs-hostd.test.image=systemd" \
  - "$TAG" >/dev/null
log "built $TAG"
echo "$TAG"
