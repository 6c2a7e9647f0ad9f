#!/bin/sh
# Builds the reference agent (Sources/rootfs-agent) for another architecture with the
# host's Swift toolchain, as Embedded Swift: the toolchain ships an Embedded standard
# library for aarch64 (and x86_64), so no Swift SDK and no emulated compiler is needed.
# The C library is Debian's, static: libc6-dev, linux-libc-dev and libgcc of that
# architecture, unpacked (never installed, nothing runs) into a cached sysroot.
# See docs/AGENT.md ("The agent on other architectures").
#
#   scripts/build-agent.sh --arch aarch64 [--out DIR]
#
# Writes DIR/rootfs-agent-ARCH (default DIR: `swift build --show-bin-path`, where
# rootfs looks for it) and prints its path. Does nothing when it is newer than
# the agent's sources. The sysroot is cached in ${ROOTFS_CACHE:-~/.cache/rootfs}.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
arch=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch=${2:?--arch needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        *) echo "build-agent: unknown argument $1 (usage: build-agent.sh --arch aarch64 [--out DIR])" >&2; exit 2 ;;
    esac
done

# Kata's uname -m names -> the Embedded Swift target, clang's target, Debian's name.
case "$arch" in
    aarch64) swift_target=aarch64-none-none-elf; clang_target=aarch64-linux-gnu; deb_arch=arm64 ;;
    x86_64) swift_target=x86_64-unknown-linux-gnu; clang_target=x86_64-linux-gnu; deb_arch=amd64 ;;
    s390x|ppc64le)
        echo "build-agent: the Swift toolchain has no Embedded standard library for $arch, so no reference agent can be built for it here; pass your own agent with rootfs build --agent PATH" >&2
        exit 1 ;;
    "") echo "build-agent: --arch is required (aarch64 or x86_64)" >&2; exit 2 ;;
    *) echo "build-agent: unknown architecture $arch (known: x86_64 aarch64 s390x ppc64le)" >&2; exit 2 ;;
esac

swiftc=$(command -v swiftc || true)
[ -n "$swiftc" ] || { echo "build-agent: swiftc is not on PATH (the host's Swift toolchain builds the agent)" >&2; exit 1; }
toolchain=$(dirname "$(dirname "$(readlink -f "$swiftc")")")
clang="$toolchain/bin/clang"
[ -x "$clang" ] || clang=$(command -v clang || true)
[ -n "$clang" ] || { echo "build-agent: no clang next to $swiftc or on PATH (it links the agent)" >&2; exit 1; }
tables="$toolchain/lib/swift/embedded/$swift_target/libswiftUnicodeDataTables.a"
[ -f "$tables" ] || { echo "build-agent: $toolchain has no Embedded Swift library for $swift_target ($tables)" >&2; exit 1; }

[ -n "$out" ] || out=$(cd "$here" && swift build --show-bin-path)
mkdir -p "$out"
out=$(cd "$out" && pwd)
agent="$out/rootfs-agent-$arch"

cache=${ROOTFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rootfs}
mkdir -p "$cache"
# Several test processes may ask at once: one builds, the others wait and reuse.
exec 9>"$cache/.build-agent-$arch.lock"
flock 9

sources="$here/Sources/rootfs-agent $here/Sources/AgentProtocol $here/Sources/CAgentSupport $0"
if [ -x "$agent" ] && [ -z "$(find $sources -newer "$agent" -type f | head -n 1)" ]; then
    echo "$agent"
    exit 0
fi

# The sysroot: bookworm's C library for the target, extracted (nothing of the target runs).
sysroot="$cache/sysroot-$deb_arch-bookworm"
if [ ! -f "$sysroot/usr/lib/$clang_target/libc.a" ]; then
    partial=$(mktemp -d "$cache/.sysroot.XXXXXX")
    trap 'rm -rf "$partial"' EXIT
    mmdebstrap --quiet --variant=extract --architectures="$deb_arch" \
        --include=libc6,libc6-dev,linux-libc-dev,libgcc-12-dev bookworm "$partial/root" >&2
    rm -rf "$sysroot"
    mv "$partial/root" "$sysroot"
    rm -rf "$partial"
    trap - EXIT
fi

work=$(mktemp -d "$out/.rootfs-agent-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The agent's C module, with the C library's headers in it (Embedded Swift has no Glibc).
mkdir "$work/cmodule"
printf 'module CAgentSupport {\n    header "%s"\n    export *\n}\n' "$here/Sources/CAgentSupport/include/cagent.h" > "$work/cmodule/module.modulemap"

set -- -target "$swift_target" -enable-experimental-feature Embedded -wmo -Osize
# The Embedded target is bare metal: tell the C headers that this is Linux and where they are.
cflags="-Xcc -DROOTFS_AGENT_EMBEDDED -Xcc -D__linux__ -Xcc -D__linux -Xcc -D__unix__ -Xcc -D__gnu_linux__
 -Xcc -isystem -Xcc $sysroot/usr/include/$clang_target -Xcc -isystem -Xcc $sysroot/usr/include"
"$swiftc" "$@" -parse-as-library -module-name AgentProtocol -emit-module \
    -emit-module-path "$work/AgentProtocol.swiftmodule" \
    "$here"/Sources/AgentProtocol/*.swift -c -o "$work/AgentProtocol.o"
# shellcheck disable=SC2086 # cflags are words on purpose
"$swiftc" "$@" $cflags -module-name rootfs_agent -I "$work" -I "$work/cmodule" \
    "$here"/Sources/rootfs-agent/*.swift -c -o "$work/agent.o"
"$clang" --target="$clang_target" --sysroot="$sysroot" -O2 -I "$here/Sources/CAgentSupport/include" \
    -c "$here/Sources/CAgentSupport/cagent.c" -o "$work/cagent.o"
"$clang" --target="$clang_target" --sysroot="$sysroot" -static -fuse-ld=lld -s \
    "$work/agent.o" "$work/AgentProtocol.o" "$work/cagent.o" "$tables" -o "$work/rootfs-agent"
mv "$work/rootfs-agent" "$agent"
echo "$agent"
