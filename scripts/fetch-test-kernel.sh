#!/bin/sh
# Fetches the kernel the boot tests use: the image that Debian's
# linux-image-cloud-amd64 (or -arm64) metapackage depends on, unpacked (not installed)
# into DEST_DIR. Prints the path of the vmlinuz. Does nothing when a kernel
# is already there. The mirror is whatever apt is configured with.
#
#   scripts/fetch-test-kernel.sh [--arch ARCH] [DEST_DIR]
#
# ARCH is Kata's uname -m name: x86_64 (the default; DEST_DIR .build-kernel), aarch64
# (linux-image-cloud-arm64; DEST_DIR .build-kernel-aarch64), s390x (linux-image-s390x) or
# ppc64le (linux-image-powerpc64le): Debian has no cloud kernel for those two, so the
# generic one is taken (DEST_DIR .build-kernel-ARCH). A foreign kernel needs apt to know
# that architecture: `dpkg --add-architecture arm64 && apt-get update` (s390x, ppc64el).
set -eu

arch=x86_64
if [ "${1:-}" = --arch ]; then
    arch=${2:?--arch needs a value}
    shift 2
fi
case "$arch" in
    x86_64) flavour=cloud-amd64; apt_arch=""; default_dest=.build-kernel ;;
    aarch64) flavour=cloud-arm64; apt_arch=":arm64"; default_dest=.build-kernel-aarch64 ;;
    s390x) flavour=s390x; apt_arch=":s390x"; default_dest=.build-kernel-s390x ;;
    ppc64le) flavour=powerpc64le; apt_arch=":ppc64el"; default_dest=.build-kernel-ppc64le ;;
    *) echo "fetch-test-kernel: no test kernel for $arch here (known: x86_64 aarch64 s390x ppc64le)" >&2; exit 1 ;;
esac
if [ -n "$apt_arch" ] && ! { dpkg --print-architecture; dpkg --print-foreign-architectures; } | grep -qx "${apt_arch#:}"; then
    echo "fetch-test-kernel: apt does not know the ${apt_arch#:} architecture: run 'dpkg --add-architecture ${apt_arch#:} && apt-get update' first" >&2
    exit 1
fi

dest=${1:-$default_dest}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

# Several test suites may ask at once: one fetches, the others wait and reuse it.
exec 9>"$dest/.lock"
flock 9

existing=$(ls "$dest"/root/boot/vmlinu[xz]-* 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ]; then
    echo "$existing"
    exit 0
fi

# The versioned package the metapackage points at, e.g. linux-image-6.1.0-28-cloud-amd64.
pkg=$(apt-cache depends "linux-image-$flavour$apt_arch" 2>/dev/null \
    | sed -n "s/^ *Depends: \(linux-image-[0-9][^ ]*-$flavour\)\(:[a-z0-9]*\)\{0,1\}\$/\1/p" | head -n 1)
if [ -z "$pkg" ]; then
    echo "fetch-test-kernel: cannot resolve linux-image-$flavour$apt_arch (run 'apt-get update' first)" >&2
    exit 1
fi

work=$(mktemp -d "$dest/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt-get download writes into the current directory; as root it needs the
# _apt user to be able to write there, so use a world-writable temp dir.
chmod 0777 "$work"
(cd "$work" && apt-get download "$pkg$apt_arch" >&2)
deb=$(ls "$work"/*.deb | head -n 1)
unpacked=$(mktemp -d "$dest/.root.XXXXXX")
trap 'rm -rf "$work" "$unpacked"' EXIT
chmod 0755 "$unpacked"
dpkg -x "$deb" "$unpacked"
rm -rf "$dest/root"
mv "$unpacked" "$dest/root"

# ppc64el ships an ELF vmlinux, the others a vmlinuz.
kernel=$(ls "$dest"/root/boot/vmlinu[xz]-* | head -n 1)
# Kernel images are installed 0600; the tests (and qemu) only need to read it.
chmod 0644 "$kernel"
echo "$kernel"
