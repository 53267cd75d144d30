#!/bin/bash
# Provisions an image being built (Packer, EC2 Image Builder): installs Docker and the ecs-hostd
# package, enables both units, never starts the agent, and removes instance-specific state
# before the snapshot (packaging spec §8.1).
#
# Usage: provision.sh PACKAGE_FILE     (an .rpm on Amazon Linux 2023, a .deb on Ubuntu/Debian)
#
# Starting the agent here would register the build instance with a cluster and bake its
# registration into every instance launched from the image. The cluster and other per-group
# settings belong in user-data, so /etc/ecs/ecs.config is not written either.
set -euo pipefail

pkg="${1:?usage: provision.sh PACKAGE_FILE}"

if command -v dnf >/dev/null 2>&1; then
    dnf install -y docker "$pkg"
else
    export DEBIAN_FRONTEND=noninteractive
    if ! dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q 'install ok installed' &&
        ! command -v dockerd >/dev/null 2>&1; then
        apt-get update
        apt-get install -y docker.io
    fi
    apt-get install -y "$(realpath "$pkg")"
fi

# Two registrars on one host must never happen: ecs-hostd replaces the official agent.
if systemctl list-unit-files ecs.service >/dev/null 2>&1 &&
    systemctl list-unit-files ecs.service | grep -q '^ecs.service'; then
    systemctl disable ecs.service
fi
# Enabled, not started: the first boot of an instance starts them.
systemctl enable docker.service ecs-hostd.service
systemd-analyze verify /usr/lib/systemd/system/ecs-hostd.service

# Instance-specific state must not be baked into the image.
rm -rf /var/lib/ecs-hostd/* "$pkg"
if command -v cloud-init >/dev/null 2>&1; then
    cloud-init clean --logs
fi
rm -f /etc/ssh/ssh_host_*
rm -rf /var/log/journal/*
if command -v dnf >/dev/null 2>&1; then dnf clean all; else apt-get clean; fi
truncate -s 0 /etc/machine-id

echo "ecs-hostd $(ecs-hostd --version 2>/dev/null || echo '?') installed and enabled; not started."
