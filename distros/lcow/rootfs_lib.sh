# build_rootfs ROOTFS_DIR: extracts Debian's busybox-static, runc, iproute2 and
# e2fsprogs (with their libraries) into ROOTFS_DIR and lays out LCOW's
# user-mode tree around them. Environment: OS_VERSION, PACKAGES, EXTRA_PKGS, REPO_URL.
# _lcow_command ROOTFS_DIR: fills lcow_cmd with the mmdebstrap command line
# (used by build_rootfs and plan_rootfs: the plan is the command that runs).
_lcow_command() {
    local rootfs_dir=$1
    local -a packages=()
    # read -a splits on blanks without globbing: package names stay literal words.
    read -r -a packages <<< "${PACKAGES:-} ${EXTRA_PKGS:-}"
    [ "${#packages[@]}" -gt 0 ] || die "lcow: PACKAGES is empty (it needs at least busybox-static)"
    local include
    include=$(IFS=,; printf '%s' "${packages[*]}")
    # extract: the packages and their dependencies are unpacked, no maintainer
    # script runs and nothing (not even Essential: yes) is added.
    lcow_cmd=(mmdebstrap --variant=extract "--include=$include"
        '--aptopt=Acquire::Languages "none"' "$OS_VERSION" "$rootfs_dir")
    [ -n "${REPO_URL:-}" ] && lcow_cmd+=("$REPO_URL")
    return 0
}

build_rootfs() {
    local -a lcow_cmd=()
    _lcow_command "$1"
    require_program mmdebstrap
    info "mmdebstrap --variant=extract ${OS_VERSION}: ${PACKAGES:-} ${EXTRA_PKGS:-}"
    "${lcow_cmd[@]}"
    lcow_layout "$1"
}

plan_rootfs() {
    local -a lcow_cmd=()
    _lcow_command "$1"
    print_command "${lcow_cmd[@]}"
    print_command lcow_layout "$1"
}

# lcow_layout ROOTFS_DIR: prunes what a utility VM never uses and adds the layout.
lcow_layout() {
    local root=$1
    info "lcow: pruning docs, package manager state and caches"
    rm -rf "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/info \
        "$root"/usr/share/locale "$root"/usr/share/lintian "$root"/usr/share/bash-completion \
        "$root"/usr/share/perl5 "$root"/usr/share/debconf "$root"/usr/include \
        "$root"/etc/apt "$root"/etc/dpkg "$root"/etc/debconf.conf "$root"/etc/cron.d \
        "$root"/var/lib/apt "$root"/var/lib/dpkg "$root"/var/cache "$root"/var/log
    rm -f "$root"/usr/bin/debconf* "$root"/usr/sbin/dpkg-preconfigure "$root"/usr/sbin/dpkg-reconfigure

    # Merged /usr: /bin, /sbin, /lib and /lib64 are LCOW's paths (/bin/sh, /sbin/runc,
    # /lib64/ld-linux-x86-64.so.2, /lib/x86_64-linux-gnu/...).
    local d
    for d in bin sbin lib lib64; do
        mkdir -p "$root/usr/$d"
        if [ ! -e "$root/$d" ] && [ ! -L "$root/$d" ]; then ln -s "usr/$d" "$root/$d"; fi
    done
    # The directories LCOW's init expects (empty in the image).
    for d in tmp proc dev run etc mnt sys root usr/lib/modules; do mkdir -p "$root/$d"; done
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"

    # busybox's applets, as links to it wherever no real tool (iproute2's ip,
    # e2fsprogs' tools) sits. The list comes from the tree's own busybox.
    local busybox="$root/usr/bin/busybox"
    [ -x "$busybox" ] || die "lcow: $busybox is missing (is busybox-static in PACKAGES?)"
    local applets
    applets=$("$busybox" --list-full) || die "lcow: cannot run the tree's busybox on this host (another architecture?)"
    local path name dir count=0
    while IFS= read -r path; do
        [ -n "$path" ] || continue
        name=${path##*/}
        case "$name" in ''|.|..|*[!A-Za-z0-9._+-]*) continue ;; esac
        case "$path" in
            sbin/*|usr/sbin/*) dir=usr/sbin ;;
            *) dir=usr/bin ;;
        esac
        if [ ! -e "$root/usr/bin/$name" ] && [ ! -L "$root/usr/bin/$name" ] \
            && [ ! -e "$root/usr/sbin/$name" ] && [ ! -L "$root/usr/sbin/$name" ]; then
            ln -s /usr/bin/busybox "$root/$dir/$name"
            count=$((count + 1))
        fi
    done <<< "$applets"
    info "lcow: $count busybox applet links"

    # The names LCOW's GCS calls.
    [ -e "$root/usr/bin/mkfs.ext4" ] || ln -s /usr/sbin/mke2fs "$root/usr/bin/mkfs.ext4"
    [ -e "$root/usr/bin/iproute" ] || ln -s ip "$root/usr/bin/iproute"
    [ -e "$root/usr/sbin/runc" ] || [ -e "$root/usr/bin/runc" ] || die "lcow: runc is missing (is runc in PACKAGES?)"
    [ -e "$root/usr/sbin/runc" ] || ln -s /usr/bin/runc "$root/usr/sbin/runc"

    # udhcpc's event script: configures the interface from the DHCP lease.
    cat > "$root/usr/sbin/udhcpc_config.script" <<'SCRIPT'
#!/bin/sh
# udhcpc -s /sbin/udhcpc_config.script: applies a DHCP lease to $interface.
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set dev "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        for gw in $router; do ip -4 route replace default via "$gw" dev "$interface"; break; done
        if [ -n "$dns" ]; then
            : > /etc/resolv.conf
            [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
            for ns in $dns; do echo "nameserver $ns" >> /etc/resolv.conf; done
        fi
        ;;
esac
exit 0
SCRIPT
    chmod 0755 "$root/usr/sbin/udhcpc_config.script"

    # /init (what the kernel runs from the initrd): mount the basics, then
    # hand PID 1 to the agent (/sbin/init, installed by rootfs).
    cat > "$root/init" <<'SCRIPT'
#!/bin/sh
# LCOW utility VM init: mounts the basics, then execs the agent as PID 1.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/mqueue
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mountpoint -q /dev/shm || mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mountpoint -q /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mountpoint -q /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
# runc needs the cgroup hierarchy.
if [ -d /sys/fs/cgroup ] && ! mountpoint -q /sys/fs/cgroup; then
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup 2>/dev/null
fi
ip link set lo up 2>/dev/null
exec /sbin/init "$@"
SCRIPT
    chmod 0755 "$root/init"

    # Root's account and the basics of /etc.
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\n' > "$root/etc/group"
    printf 'root:*:1::::::\n' > "$root/etc/shadow"
    chmod 0640 "$root/etc/shadow"
    printf 'lcow\n' > "$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > "$root/etc/hosts"
    : > "$root/etc/resolv.conf"
    ln -sfn /proc/self/mounts "$root/etc/mtab"
    OK "lcow layout ready"
}
