#!/bin/sh
# Builds the `debian-dev` image: Debian bookworm with python3, nodejs, git and
# CA certificates, as a plain rootfs tarball made by mmdebstrap, then imports
# it into the local Warren daemon as one layer.
#
#   images/debian-dev/build.sh                  # build and import debian-dev:latest
#   NAME=debian-dev:2025-05 images/debian-dev/build.sh
#   NO_IMPORT=1 images/debian-dev/build.sh      # only write the tarball
#
# Environment:
#   OUT        tarball to write        (default: debian-dev.tar next to this script)
#   NAME       image name in Warren    (default: debian-dev:latest)
#   MIRROR     Debian mirror           (default: http://deb.debian.org/debian)
#   SUITE      Debian suite            (default: bookworm)
#   WARREN     the warren binary       (default: warren on PATH)
#   NO_IMPORT  set to skip the import
#   SOURCE_DATE_EPOCH  fixes timestamps for a reproducible tarball
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/debian-dev.tar}
name=${NAME:-debian-dev:latest}
mirror=${MIRROR:-http://deb.debian.org/debian}
suite=${SUITE:-bookworm}
warren=${WARREN:-warren}

if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "error: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2
    exit 1
fi

# As root mmdebstrap builds in a plain chroot; otherwise it needs user
# namespaces and subuids (its "unshare" mode). "auto" picks.
started=$(date +%s)
echo "building $suite rootfs into $out (this takes a few minutes)" >&2
mmdebstrap \
    --variant=apt \
    --include=python3,nodejs,git,ca-certificates \
    --format=tar \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='mkdir -p "$1/workspace"' \
    --customize-hook='rm -f "$1/etc/hostname" "$1/etc/resolv.conf"' \
    --customize-hook='chroot "$1" sh -c "python3 --version && node --version && git --version"' \
    "$suite" "$out" "$mirror"
echo "built $out ($(du -h "$out" | cut -f1)) in $(( $(date +%s) - started )) s" >&2

if [ -n "${NO_IMPORT:-}" ]; then
    exit 0
fi
"$warren" image import "$out" --name "$name"
