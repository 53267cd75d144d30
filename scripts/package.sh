#!/usr/bin/env bash
# Builds the ecs-hostd packages in one command: a .deb (cargo-deb), a generic .rpm and an Amazon
# Linux 2023 .rpm that also requires docker (cargo-generate-rpm), plus SHA256SUMS.
#
#   scripts/package.sh [--profile release|dev] [--out DIR] [--revision N] [--fast] [--no-build]
#                      [--only deb|rpm] [--sign GPG_KEY_ID]
#
#   --profile release  (default) cargo build --release; what ships.
#   --profile dev      packages target/debug/ecs-hostd, the binary `cargo test` built: the
#                      package tests use it to avoid a release build (same files, same scripts).
#   --out DIR          where the packages go (default target/packages).
#   --revision N       package revision (deb -N, rpm release N); default 1.
#   --fast             light compression (deb: gzip instead of xz; rpm: none), for tests.
#   --no-build         do not run cargo build (the binary must exist).
#   --only deb|rpm     build one format only.
#   --sign KEY         detached ASCII signatures (*.asc) with gpg.
#
# cargo-deb and cargo-generate-rpm are installed with `cargo install --locked` at pinned versions
# into $ECS_HOSTD_CACHE/tools (default ~/.cache/ecs-hostd/tools) when missing, and reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ECS_HOSTD_CACHE:-$HOME/.cache/ecs-hostd}"
TOOLS="$CACHE/tools"
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

profile=release out="$ROOT/target/packages" revision=1 fast=() rpm_compress=() build=1 sign="" only=""
while [ $# -gt 0 ]; do
    case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --revision) revision="$2"; shift 2 ;;
    --fast) fast=(--fast); rpm_compress=(--payload-compress none); shift ;;
    --no-build) build=0; shift ;;
    --sign) sign="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$profile" in
release) target_dir=release ;;
dev) target_dir=debug ;;
*) echo "--profile must be release or dev" >&2; exit 2 ;;
esac
[[ "$revision" =~ ^[0-9]+$ ]] || { echo "--revision must be a number" >&2; exit 2; }
case "$only" in "" | deb | rpm) ;; *) echo "--only must be deb or rpm" >&2; exit 2 ;; esac

log() { printf '\033[1m[package]\033[0m %s\n' "$*" >&2; }

ensure_tool() {
    local tool=$1 version=$2
    if ! "$TOOLS/bin/$tool" --version 2>/dev/null | grep -qF "$version"; then
        log "installing $tool $version into $TOOLS (once per machine)"
        cargo install --quiet --locked --root "$TOOLS" --version "$version" "$tool"
    fi
}
ensure_tool cargo-deb "$CARGO_DEB_VERSION"
ensure_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"
export PATH="$TOOLS/bin:$PATH"

cd "$ROOT"
if [ "$build" = 1 ]; then
    if [ "$profile" = release ]; then
        log "cargo build --release"
        cargo build --release --locked --bin ecs-hostd
    else
        cargo build --locked --bin ecs-hostd
    fi
fi
binary="target/$target_dir/ecs-hostd"
[ -x "$binary" ] || { echo "$binary is missing (build it, or drop --no-build)" >&2; exit 1; }

version=$(cargo metadata --no-deps --format-version 1 --offline 2>/dev/null |
    sed -n 's/.*"name":"ecs-hostd","version":"\([^"]*\)".*/\1/p')
[ -n "$version" ] || version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(uname -m)
mkdir -p "$out"

files=()
if [ "$only" != rpm ]; then
    log "deb ($profile binary)"
    # --quiet also hides cargo-deb's warning that dev profiles are for tests only (they are).
    cargo deb --quiet --no-build --profile "$profile" --deb-revision "$revision" "${fast[@]}" \
        -o "$out/" >/dev/null
    files+=("$(cd "$out" && ls ecs-hostd_"$version"-"$revision"_*.deb)")
fi
if [ "$only" != deb ]; then
    rpm_args=(--profile "$profile" --metadata-overwrite packaging/rpm/scriptlets.toml "${rpm_compress[@]}")
    log "rpm (generic)"
    cargo generate-rpm "${rpm_args[@]}" -s "release = \"$revision\"" \
        -o "$out/ecs-hostd-$version-$revision.$arch.rpm"
    log "rpm (Amazon Linux 2023)"
    cargo generate-rpm "${rpm_args[@]}" --variant al2023 -s "release = \"$revision.amzn2023\"" \
        -o "$out/ecs-hostd-$version-$revision.amzn2023.$arch.rpm"
    files+=("ecs-hostd-$version-$revision.$arch.rpm" "ecs-hostd-$version-$revision.amzn2023.$arch.rpm")
fi

cd "$out"
sha256sum "${files[@]}" >SHA256SUMS
if [ -n "$sign" ]; then
    for f in "${files[@]}" SHA256SUMS; do gpg --batch --yes --local-user "$sign" --armor --detach-sign "$f"; done
fi
for f in "${files[@]}"; do echo "$out/$f"; done
