#!/bin/bash
# SSM Distributor install script of ecs-hostd (AWS-ConfigureAWSPackage, action Install). Runs in
# the unpacked zip, next to the package file. One of the three places that enable the unit
# (packaging spec §7.1); it starts the agent without waiting, as user-data does.
set -euo pipefail
cd "$(dirname "$0")"
pkg=$(ls ecs-hostd*.rpm ecs-hostd*.deb 2>/dev/null | head -1)
[ -n "$pkg" ] || { echo "no ecs-hostd package next to install.sh" >&2; exit 1; }
if [ "${pkg##*.}" = rpm ]; then
    dnf install -y "./$pkg"
else
    DEBIAN_FRONTEND=noninteractive apt-get install -y "./$pkg"
fi
systemctl enable --now --no-block ecs-hostd.service
