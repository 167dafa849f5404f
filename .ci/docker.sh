#!/usr/bin/env bash
# Docker for the `docker` test tier, on a machine without a registry (as root, safe to run again):
#   1. install docker.io and debootstrap, start dockerd when no engine answers;
#   2. build the base image from Debian packages (debootstrap) unless it exists: it is cached
#      as an image and as a tarball, because debootstrap takes about a minute;
#   3. install gVisor (runsc) and declare it as an Engine runtime (.ci/runsc.sh, for `sandbox: gvisor`);
#   4. build the fieldgate images on that base from wheels built on this host.
# Where a registry is reachable, `fieldgate images build` alone (base python:3.11-slim) does step 3.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${FIELDGATE_BASE_IMAGE:-fieldgate/base:bookworm}"
CACHE="${FIELDGATE_CACHE:-/var/cache/fieldgate}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/fieldgate-dockerd.log}"

export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null && systemctl start docker >/dev/null 2>&1; then
    :
  else
    # No init system (containers, CI runners): run the daemon in the background.
    setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see $DOCKERD_LOG" >&2; tail -20 "$DOCKERD_LOG" >&2; exit 1; }
fi

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  mkdir -p "$CACHE"
  tarball="$CACHE/base-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    # The machine's own Debian mirror, from its apt sources (deb822 or one-line format).
    mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    if [ -z "$mirror" ]; then
      mirror="$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
        /etc/apt/sources.list 2>/dev/null || true)"
    fi
    if [ -z "$mirror" ]; then
      echo "no Debian mirror in this machine's apt sources (/etc/apt/sources.list.d/*.sources," \
        "/etc/apt/sources.list): debootstrap needs one to build $BASE_IMAGE" >&2
      exit 1
    fi
    rootfs="$CACHE/rootfs.tmp"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
      "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # What a runtime image never needs: package lists and caches, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
      "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale "$rootfs"/var/log/*
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
  fi
  docker import -c 'CMD ["python3"]' "$tarball" "$BASE_IMAGE" >/dev/null
fi

bash .ci/runsc.sh

python3 -m gateway.cli images build --base "$BASE_IMAGE"
