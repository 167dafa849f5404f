#!/usr/bin/env bash
# Docker for the `docker` test tier, on a machine without a registry (as root, safe to run again):
#   1. install docker.io and debootstrap, start dockerd when no engine answers;
#   2. build the base images from Debian packages (debootstrap) unless they exist: amd64 and
#      arm64 (the arm64 root is unpacked with --foreign and finished under qemu, .ci/qemu.sh);
#      each is cached as an image and as a tarball, because debootstrap takes minutes;
#   3. install gVisor (runsc) and declare it as an Engine runtime (.ci/runsc.sh, for `sandbox: gvisor`);
#   4. build the fieldgate images for both platforms on those bases from wheels fetched on this
#      host (the arm64 images need no emulation to build: gateway/images.py).
# Where a registry is reachable, `fieldgate images build` alone (base python:3.11-slim) does step 3.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${FIELDGATE_BASE_IMAGE:-fieldgate/base:bookworm}"
CACHE="${FIELDGATE_CACHE:-/var/cache/fieldgate}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/fieldgate-dockerd.log}"
# The platforms built: the machine's own and arm64 (FIELDGATE_PLATFORMS=linux/amd64 skips arm64).
PLATFORMS="${FIELDGATE_PLATFORMS:-linux/amd64,linux/arm64}"

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

mirror() {
  # The machine's own Debian mirror, from its apt sources (deb822 or one-line format).
  local found
  found="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  if [ -z "$found" ]; then
    found="$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list 2>/dev/null || true)"
  fi
  if [ -z "$found" ]; then
    echo "no Debian mirror in this machine's apt sources (/etc/apt/sources.list.d/*.sources," \
      "/etc/apt/sources.list): debootstrap needs one to build the base images" >&2
    return 1
  fi
  echo "$found"
}

# base_image ARCH IMAGE TARBALL: a Debian bookworm minbase with python3, imported as IMAGE.
base_image() {
  local arch="$1" image="$2" tarball="$3"
  if docker image inspect "$image" >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$CACHE"
  if [ ! -s "$tarball" ]; then
    local source rootfs="$CACHE/rootfs-$arch.tmp" log="$CACHE/debootstrap-$arch.log"
    source="$(mirror)"
    rm -rf "$rootfs"
    if [ "$arch" = "$(dpkg --print-architecture)" ]; then
      debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$source" \
        >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
    else
      # Unpacked without running anything, then configured under qemu (binfmt_misc).
      bash .ci/qemu.sh
      debootstrap --arch="$arch" --foreign --variant=minbase --include=python3,ca-certificates bookworm "$rootfs" "$source" \
        >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
      chroot "$rootfs" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 \
        || { tail -20 "$log" >&2; exit 1; }
    fi
    # What a runtime image never needs: package lists and caches, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
      "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale "$rootfs"/var/log/*
    tar -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
  fi
  if [ "$arch" = "$(dpkg --print-architecture)" ]; then
    docker import -c 'CMD ["python3"]' "$tarball" "$image" >/dev/null
  else
    # `docker import` records the engine's own architecture (its --platform needs an experimental
    # daemon); a build FROM scratch records the one asked for.
    local context
    context="$(mktemp -d)"
    ln "$tarball" "$context/root.tar" 2>/dev/null || cp "$tarball" "$context/root.tar"
    printf 'FROM scratch\nADD root.tar /\nCMD ["python3"]\n' >"$context/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q --platform "linux/$arch" -t "$image" "$context" >/dev/null
    rm -rf "$context"
  fi
}

base_image "$(dpkg --print-architecture)" "$BASE_IMAGE" "$CACHE/base-bookworm.tar"
case ",$PLATFORMS," in
  *,linux/arm64,*)
    # The arm64 base is named after the host's: gateway/images.py looks for BASE-arm64.
    base_image arm64 "$BASE_IMAGE-arm64" "$CACHE/base-bookworm-arm64.tar" ;;
esac

bash .ci/runsc.sh

python3 -m gateway.cli images build --base "$BASE_IMAGE" --platform "$PLATFORMS"
