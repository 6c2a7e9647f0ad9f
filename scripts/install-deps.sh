#!/usr/bin/env bash
# Installs what rootfs needs on Debian 12 (run as root) and starts the Docker
# engine when it is installed but not running.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
mapfile -t packages < <(grep -v -e '^#' -e '^[[:space:]]*$' "$here/packages.txt")
# arm64 for apt: scripts/fetch-test-kernel.sh --arch aarch64 downloads Debian's arm64 kernel.
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update
apt-get install -y "${packages[@]}"
"$here/start-docker.sh"
