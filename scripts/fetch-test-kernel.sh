#!/bin/sh
# Fetches the kernel the boot tests use: the image that Debian's
# linux-image-cloud-amd64 metapackage depends on, unpacked (not installed)
# into DEST_DIR. Prints the path of the vmlinuz. Does nothing when a kernel
# is already there. The mirror is whatever apt is configured with.
#
#   scripts/fetch-test-kernel.sh [DEST_DIR]     (default: .build-kernel)
set -eu

dest=${1:-.build-kernel}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

# Several test suites may ask at once: one fetches, the others wait and reuse it.
exec 9>"$dest/.lock"
flock 9

existing=$(ls "$dest"/root/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ]; then
    echo "$existing"
    exit 0
fi

# The versioned package the metapackage points at, e.g. linux-image-6.1.0-28-cloud-amd64.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1)
if [ -z "$pkg" ]; then
    echo "fetch-test-kernel: cannot resolve linux-image-cloud-amd64 (run 'apt-get update' first)" >&2
    exit 1
fi

work=$(mktemp -d "$dest/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt-get download writes into the current directory; as root it needs the
# _apt user to be able to write there, so use a world-writable temp dir.
chmod 0777 "$work"
(cd "$work" && apt-get download "$pkg" >&2)
deb=$(ls "$work"/*.deb | head -n 1)
unpacked=$(mktemp -d "$dest/.root.XXXXXX")
trap 'rm -rf "$work" "$unpacked"' EXIT
chmod 0755 "$unpacked"
dpkg -x "$deb" "$unpacked"
rm -rf "$dest/root"
mv "$unpacked" "$dest/root"

kernel=$(ls "$dest"/root/boot/vmlinuz-* | head -n 1)
# Kernel images are installed 0600; the tests (and qemu) only need to read it.
chmod 0644 "$kernel"
echo "$kernel"
