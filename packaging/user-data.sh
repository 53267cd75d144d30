#!/bin/bash
# EC2 user-data for ecs-hostd (packaging spec §5). Paste it as the launch template's user data
# and edit the settings block.
#
# Rules this script follows (breaking them hangs boot):
#  1. Configuration is written before the service starts.
#  2. The service is started with --no-block: ecs-hostd.service is ordered after
#     cloud-final.service, which is waiting for this very script.
#  3. No second, blocking `systemctl start` later in the script.
#
# It runs on every instance launch, not on every boot: a warm-pool instance that resumes from
# Warmed:Stopped does not run it again; the agent waits for InService itself
# (ECS_WARM_POOLS_CHECK).
set -euo pipefail

# ---- settings ----
CLUSTER="my-cluster"            # ECS cluster to join
WARM_POOL="false"               # true if the Auto Scaling group has a warm pool
SPOT_DRAINING="true"            # drain on a Spot interruption notice
LIFECYCLE_HOOK=""               # termination hook ecs-hostd completes after draining; empty = none
# Empty when the AMI already contains ecs-hostd (recommended). Otherwise a local path or an
# https:// URL of the .rpm (Amazon Linux 2023) or .deb (Ubuntu, Debian), and its SHA-256.
PACKAGE=""
PACKAGE_SHA256=""
# ------------------

if [ -n "$PACKAGE" ] && ! command -v ecs-hostd >/dev/null 2>&1; then
    file="$PACKAGE"
    case "$PACKAGE" in
    http://* | https://*)
        file="/tmp/$(basename "$PACKAGE")"
        curl -fsSL --retry 5 -o "$file" "$PACKAGE"
        ;;
    esac
    if [ -n "$PACKAGE_SHA256" ]; then
        echo "$PACKAGE_SHA256  $file" | sha256sum -c -
    fi
    if command -v dnf >/dev/null 2>&1; then
        dnf install -y docker "$file"
    else
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$(realpath "$file")"
    fi
fi

install -d -m 0755 /etc/ecs /etc/ecs-hostd
# Append: later lines win, so this overrides anything the AMI carried.
{
    echo "ECS_CLUSTER=$CLUSTER"
    echo "ECS_WARM_POOLS_CHECK=$WARM_POOL"
    echo "ECS_ENABLE_SPOT_INSTANCE_DRAINING=$SPOT_DRAINING"
    if [ -n "$LIFECYCLE_HOOK" ]; then
        echo "ECS_HOSTD_LIFECYCLE_HOOK=$LIFECYCLE_HOOK"
    fi
} >>/etc/ecs/ecs.config

# The only start, and it does not wait (rule 2).
systemctl enable --now --no-block ecs-hostd.service
