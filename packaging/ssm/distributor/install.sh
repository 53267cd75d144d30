#!/bin/bash
# SSM Distributor install script of ecs-hostd (AWS-ConfigureAWSPackage, action Install). Runs in
# the unpacked zip, next to the package file. One of the three places that enable the unit
# (packaging spec §7.1); it starts the agent without waiting, as user-data does.
set -euo pipefail
cd "$(dirname "$0")"
shopt -s nullglob
found=(ecs-hostd*.rpm ecs-hostd*.deb)
[ ${#found[@]} -eq 1 ] || { echo "expected one ecs-hostd package next to install.sh, found ${#found[@]}" >&2; exit 1; }
pkg=${found[0]}
if [ "${pkg##*.}" = rpm ]; then
    dnf install -y "./$pkg"
else
    DEBIAN_FRONTEND=noninteractive apt-get install -y "./$pkg"
fi
systemctl enable --now --no-block ecs-hostd.service
