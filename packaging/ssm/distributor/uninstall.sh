#!/bin/bash
# SSM Distributor uninstall of ecs-hostd: removes the package (its scripts stop and disable the
# unit). The agent's state in /var/lib/ecs-hostd is kept, as a package removal does.
set -euo pipefail
if command -v rpm >/dev/null 2>&1 && rpm -q ecs-hostd >/dev/null 2>&1; then
    dnf remove -y ecs-hostd
else
    DEBIAN_FRONTEND=noninteractive apt-get remove -y ecs-hostd
fi
