#!/usr/bin/env bash
# Build the tidecast container image offline from Debian packages:
#   infra/container/build.sh [--binary PATH] [--tag NAME]
# 1. the base image `localhost/tidecast-base:bookworm`, made once with
#    `debootstrap --variant=minbase bookworm` and `podman import` (skipped when present);
# 2. `infra/container/Containerfile` FROM it, with the binary (default: the release build).
# Needs root, podman, runc and debootstrap (`infra/bootstrap.sh --test` installs them).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-${here}/containers.conf}"
binary="${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}/release/tidecast"
tag="localhost/tidecast:latest"
base="localhost/tidecast-base:bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--tag NAME]" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "build.sh: no binary at $binary (cargo build --release -p tidecast)" >&2; exit 1; }

if ! podman image exists "$base"; then
  echo "build.sh: making $base with debootstrap (once; a few minutes)"
  rootfs="$(mktemp -d /var/tmp/tidecast-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  # the image's apt uses the same mirror; no recommends, no caches
  echo "deb $mirror bookworm main" > "$rootfs/etc/apt/sources.list"
  echo "deb $mirror bookworm-updates main" >> "$rootfs/etc/apt/sources.list"
  echo 'APT::Install-Recommends "false";' > "$rootfs/etc/apt/apt.conf.d/99tidecast"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/tidecast"
strip "$context/tidecast" 2>/dev/null || true
podman build --quiet --format docker --build-arg "BASE=$base" \
  -f "$here/Containerfile" -t "$tag" "$context"
echo "build.sh: built $tag"
