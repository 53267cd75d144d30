#!/bin/bash
# SSM Distributor in-place update of ecs-hostd (installationType "In-place update"): installs the
# new package over the old one. The package's scripts try-restart a running agent and keep an
# admin's stop or disable; this script never enables or starts anything.
set -euo pipefail
cd "$(dirname "$0")"
pkg=$(ls ecs-hostd*.rpm ecs-hostd*.deb 2>/dev/null | head -1)
[ -n "$pkg" ] || { echo "no ecs-hostd package next to update.sh" >&2; exit 1; }
if [ "${pkg##*.}" = rpm ]; then
    dnf install -y "./$pkg"
else
    DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades "./$pkg"
fi
