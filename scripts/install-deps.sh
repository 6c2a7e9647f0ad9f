#!/usr/bin/env bash
# Installs what rootfs needs on Debian 12 (run as root) and starts the Docker
# engine when it is installed but not running.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
mapfile -t packages < <(grep -v -e '^#' -e '^[[:space:]]*$' "$here/packages.txt")
# Foreign architectures for apt: scripts/fetch-test-kernel.sh --arch aarch64|s390x|ppc64le
# downloads Debian's kernel for each.
for foreign in arm64 s390x ppc64el; do
    dpkg --print-foreign-architectures | grep -qx "$foreign" || dpkg --add-architecture "$foreign"
done
apt-get update
apt-get install -y "${packages[@]}"
"$here/start-docker.sh"
