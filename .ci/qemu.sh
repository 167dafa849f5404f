#!/usr/bin/env bash
# Emulation of arm64 on an x86_64 machine (as root, safe to run again): qemu-user-static and
# binfmt-support, binfmt_misc mounted, qemu-aarch64 enabled. Needed to finish the arm64 base
# (debootstrap's second stage) and to run the arm64 images in the docker tier; building the
# arm64 images themselves runs nothing under emulation (gateway/images.py).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
if ! command -v update-binfmts >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq qemu-user-static binfmt-support >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
if ! grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  echo "qemu-aarch64 is not registered in /proc/sys/fs/binfmt_misc: arm64 programs cannot run here" >&2
  exit 1
fi
