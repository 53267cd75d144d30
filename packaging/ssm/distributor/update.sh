#!/bin/bash
# SSM Distributor in-place update of ecs-hostd (installationType "In-place update"): installs the
# new package over the old one. The package's scripts try-restart a running agent and keep an
# admin's stop or disable; this script never enables or starts anything.
set -euo pipefail
cd "$(dirname "$0")"
shopt -s nullglob
found=(ecs-hostd*.rpm ecs-hostd*.deb)
[ ${#found[@]} -eq 1 ] || { echo "expected one ecs-hostd package next to update.sh, found ${#found[@]}" >&2; exit 1; }
pkg=${found[0]}
if [ "${pkg##*.}" = rpm ]; then
    dnf install -y "./$pkg"
else
    DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades "./$pkg"
fi
