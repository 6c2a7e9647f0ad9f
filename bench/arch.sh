#!/usr/bin/env bash
# Cross-architecture build times, one machine, one run (bench/README.md, "Other architectures"):
#   1. rootfs build debian --agent-init --initrd           (the host's architecture)
#   2. rootfs build debian --arch aarch64 --agent-init --initrd   (qemu-user through binfmt_misc)
#   3. mmdebstrap --variant=minbase --architectures=arm64 SUITE   (the floor: the bare bootstrap)
# Prints one JSON object (seconds) and writes it to --out FILE when given.
#
#   bench/arch.sh [--rootfs BIN] [--suite trixie] [--work DIR] [--out FILE]
#
# Needs root, the network (Debian's mirror), qemu-user-static and binfmt-support, and the
# aarch64 reference agent next to rootfs (scripts/build-agent.sh --arch aarch64).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
rootfs_bin=${ROOTFS:-$repo/.build/debug/rootfs}
suite=trixie
work=${BENCH_WORK:-/var/tmp/rootfs-bench-arch}
out=""
while [ $# -gt 0 ]; do
    case $1 in
        --rootfs) rootfs_bin=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "bench/arch.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
rm -rf "$work"
mkdir -p "$work"

seconds() {  # runs "$@", prints the wall-clock seconds it took
    local start end ms
    start=$(date +%s%N)
    "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

host=$(uname -m)
native=$(seconds "$rootfs_bin" build debian --os-version "$suite" --agent-init --initrd "$work/native.initrd" --no-manifest --no-cache)
aarch64=$(seconds "$rootfs_bin" build debian --os-version "$suite" --arch aarch64 --agent-init --initrd "$work/aarch64.initrd" --no-manifest --no-cache)
bare=$(seconds mmdebstrap --variant=minbase --architectures=arm64 "$suite" "$work/bare-arm64.tar")

result=$(printf '{"host":"%s","suite":"%s","rootfs_build_%s_s":%s,"rootfs_build_aarch64_s":%s,"mmdebstrap_arm64_s":%s,"date":"%s"}\n' \
    "$host" "$suite" "$host" "$native" "$aarch64" "$bare" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
echo "$result"
[ -z "$out" ] || echo "$result" >> "$out"
