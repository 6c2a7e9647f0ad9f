#!/usr/bin/env bash
# The baseline of the disk-image benchmark: the steps Kata's osbuilder
# image_builder.sh takes for an ext4 image, redone here (not its code) so the
# benchmark can time them on the same tree as `rootfs image`. Needs root and
# loop devices.
#
#   bench/kata-image.sh TREE OUTPUT
#
# 1. size by trial: du -s the tree; then, for i = 1, 2, ...: a raw file of
#    du + 10*i MiB (qemu-img), an MBR with one partition from 1 MiB (parted),
#    losetup -P + partprobe, mkfs.ext4 + tune2fs on the partition, mount, df, umount,
#    losetup -d, until the file system has more room than du said;
# 2. the image: the size plus Kata's reserved MiBs, rounded up to 128 MiB;
#    qemu-img, parted, losetup -P + partprobe, mkfs.ext4 + tune2fs -m 3, mount,
#    cp -a TREE/*, sync, umount, fsck.ext4 -D -y, losetup -d.
# Left out (so the baseline is, if anything, faster than Kata's script):
# the systemd unit pruning (find over the mounted tree), SELinux labels and
# the DAX header (a second partition table plus a dd copy of the whole image).
set -euo pipefail

tree=$1
output=$2
[ -d "$tree" ] || { echo "kata-image: $tree is not a directory" >&2; exit 2; }

rootfs_start=1   # MiB before the partition
rootfs_end=-1    # parted's "1 MiB before the end"
dax_header=2     # MiB Kata reserves for its DAX header
mem_boundary=128 # the image size is rounded up to this many MiB
increment=10
max_tries=20

device=""
mount_dir=$(mktemp -d "${TMPDIR:-/tmp}/kata-image-mnt.XXXXXX")
cleanup() {
    mountpoint -q "$mount_dir" && umount "$mount_dir"
    [ -n "$device" ] && losetup -d "$device" 2>/dev/null
    rmdir "$mount_dir" 2>/dev/null || true
}
trap cleanup EXIT

create_disk() { # FILE MiB
    qemu-img create -q -f raw "$1" "$2M"
    parted -s -a optimal "$1" -- mklabel msdos mkpart primary ext4 "${rootfs_start}M" "${rootfs_end}M" 2>/dev/null
}

attach() { # FILE -> sets $device, waits for ${device}p1 like Kata (5 tries, 1 s apart)
    device=$(losetup -P -f --show "$1")
    partprobe -s "$device" >/dev/null 2>&1 || true
    for _ in 1 2 3 4 5; do
        [ -b "${device}p1" ] && return 0
        sleep 1
    done
    echo "kata-image: ${device}p1 did not appear" >&2
    return 1
}

detach() { losetup -d "$device"; device=""; }

# Kata formats with 4 KiB blocks, then sets 3 % reserved blocks.
format() { mkfs.ext4 -q -F -b 4096 "${device}p1"; tune2fs -m 3 "${device}p1" >/dev/null; }

# 1. Size by trial.
rootfs_mb=$(du -B 1M -s "$tree" | awk '{print $1}')
trial=$(mktemp "${TMPDIR:-/tmp}/kata-image-trial.XXXXXX")
disk_mb=""
for i in $(seq 1 "$max_tries"); do
    size=$((rootfs_mb + i * increment))
    create_disk "$trial" "$size"
    attach "$trial" || continue
    format
    mount "${device}p1" "$mount_dir"
    avail=$(df -BM --output=avail "$mount_dir" | tail -n1 | tr -d 'M ')
    umount "$mount_dir"
    detach
    if [ "$avail" -gt "$rootfs_mb" ]; then
        disk_mb=$size
        echo "kata-image: trial $i: ${size} MiB fits ${rootfs_mb} MiB (${avail} MiB free)" >&2
        break
    fi
done
rm -f "$trial"
[ -n "$disk_mb" ] || { echo "kata-image: no size fits after $max_tries tries" >&2; exit 1; }

img_mb=$((disk_mb + rootfs_start + dax_header + rootfs_end))
rest=$((img_mb % mem_boundary))
[ "$rest" -eq 0 ] || img_mb=$((img_mb + mem_boundary - rest))
img_mb=$((img_mb - dax_header))

# 2. The image.
rm -f "$output"
create_disk "$output" "$img_mb"
attach "$output"
format
mount "${device}p1" "$mount_dir"
cp -a "$tree"/* "$mount_dir"
sync
umount "$mount_dir"
fsck.ext4 -D -y "${device}p1" >/dev/null 2>&1 || [ $? -le 1 ]
detach
echo "kata-image: $output ${img_mb} MiB" >&2
