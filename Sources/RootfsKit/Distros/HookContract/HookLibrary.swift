/// The helper functions every hook can use, sourced before config.sh and
/// rootfs_lib.sh. They mirror what Kata osbuilder's scripts give their hooks,
/// so Kata-style distro directories work unchanged.
public enum HookLibrary {
    public static let text = #"""
    # rootfs hook helpers (sourced before config.sh and rootfs_lib.sh)
    info() { printf 'INFO: %s\n' "$*"; }
    warn() { printf 'WARNING: %s\n' "$*" >&2; }
    OK() { printf '[OK] %s\n' "$*"; }
    die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
    # hint TEXT: what the user can do, shown as the hint of the next die's error.
    hint() { printf 'HINT: %s\n' "$*" >&2; }
    # check_program NAME: true when NAME is on PATH.
    check_program() { command -v "$1" >/dev/null 2>&1; }
    # require_program NAME...: dies naming the first missing program.
    require_program() {
        local p
        for p in "$@"; do check_program "$p" || die "'$p' is needed on this host to build ${OS_NAME:-this distro}"; done
    }
    # split_words VAR_VALUE: prints one word a line (for package lists).
    split_words() { local w; for w in $1; do printf '%s\n' "$w"; done; }
    # Kata osbuilder's names: warning, check_root.
    warning() { warn "$@"; }
    check_root() { [ "$(id -u)" = 0 ] || die "this distro's build_rootfs needs root (it calls check_root): run rootfs as root, or build with --docker"; }
    # mmdebstrap_cache_args: fills the array mmdebstrap_cache with the mmdebstrap options that reuse
    # ROOTFS_PACKAGE_CACHE (rootfs's package cache: downloaded .debs and apt's lists) across builds,
    # mmdebstrap's own recipe (man mmdebstrap, sync-in/sync-out). Its clean-up removes both from the
    # tree afterwards, so the output is the same with or without the cache. Empty without a cache.
    mmdebstrap_cache_args() {
        mmdebstrap_cache=()
        local c=${ROOTFS_PACKAGE_CACHE:-}
        [ -n "$c" ] || return 0
        if [[ $c =~ [[:space:]] ]] || ! mkdir -p "$c/archives" "$c/lists" 2>/dev/null; then
            warn "the package cache $c cannot be used: building without it"
            return 0
        fi
        mmdebstrap_cache=(--skip=essential/unlink
            --setup-hook='mkdir -p "$1"/var/cache/apt/archives "$1"/var/lib/apt/lists'
            "--setup-hook=sync-in $c/archives /var/cache/apt/archives/"
            "--setup-hook=sync-in $c/lists /var/lib/apt/lists/"
            # sync-in gives the two directories the cache directory's owner and mode (the user's,
            # rootless), and the cached lock files (kept by the clean-up) theirs: put back what
            # mmdebstrap makes without a cache (apt makes new lock files).
            --setup-hook='chown 0:0 "$1"/var/cache/apt/archives "$1"/var/lib/apt/lists && chmod 0755 "$1"/var/cache/apt/archives "$1"/var/lib/apt/lists && rm -f "$1"/var/cache/apt/archives/lock "$1"/var/lib/apt/lists/lock'
            "--customize-hook=sync-out /var/cache/apt/archives $c/archives"
            "--customize-hook=sync-out /var/lib/apt/lists $c/lists")
    }
    # apt_install_into ROOTFS_DIR PACKAGES...: extend_rootfs for a tree mmdebstrap made (debian,
    # ubuntu): the tree's own apt-get installs PACKAGES in a chroot, with the tree's sources.list and
    # the apt and dpkg options mmdebstrap left in it (no man pages, no docs...), and no recommends
    # (mmdebstrap's default). ROOTFS_PACKAGE_CACHE (or a scratch directory) is bind-mounted as
    # apt's lists and archives, so the tree's own stay as the base left them and an offline host
    # with a warm cache installs from the cached lists. The mounts live in a private mount
    # namespace and end with it; afterwards the files mmdebstrap's clean-up removes are removed.
    apt_install_into() {
        local rootfs_dir=$1
        shift
        [ "$#" -gt 0 ] || die "apt_install_into: no packages"
        [ "$(id -u)" = 0 ] || die "extend_rootfs installs into the tree with chroot, which needs root"
        require_program unshare chroot mount
        [ -x "$rootfs_dir/usr/bin/apt-get" ] || die "$rootfs_dir has no apt-get: not a tree mmdebstrap made"
        local cache=${ROOTFS_PACKAGE_CACHE:-} scratch="" made=() kept=() kept_owner=() d i
        if [ -z "$cache" ] || [[ $cache =~ [[:space:]] ]] || ! mkdir -p "$cache/archives" "$cache/lists" 2>/dev/null; then
            scratch=$(mktemp -d)
            cache=$scratch
        fi
        # apt gives its partial directories to _apt; mmdebstrap's sync-in copies the cache's into the
        # next cold build's tree, owner and all: their owners are put back afterwards (a directory
        # made here is removed), so the cache leaves the outputs as they are without it.
        for d in "$cache/archives/partial" "$cache/lists/partial"; do
            if [ -d "$d" ]; then kept+=("$d"); kept_owner+=("$(stat -c %u:%g "$d")"); else mkdir -p "$d"; made+=("$d"); fi
        done
        # Services must not start in the chroot (invoke-rc.d asks policy-rc.d), and apt needs a
        # resolver: both only for the install, removed after it (the base has neither).
        if [ ! -e "$rootfs_dir/usr/sbin/policy-rc.d" ]; then
            printf '#!/bin/sh\nexit 101\n' > "$rootfs_dir/usr/sbin/policy-rc.d"
            chmod 0755 "$rootfs_dir/usr/sbin/policy-rc.d"
            made+=("$rootfs_dir/usr/sbin/policy-rc.d")
        fi
        if [ ! -e "$rootfs_dir/etc/resolv.conf" ] && [ ! -L "$rootfs_dir/etc/resolv.conf" ] && [ -f /etc/resolv.conf ]; then
            : > "$rootfs_dir/etc/resolv.conf"
            made+=("$rootfs_dir/etc/resolv.conf")
        fi
        # debconf's config-script directory: apt's dpkg-preconfigure makes it, mmdebstrap's run does not.
        local had_tmpci=""
        [ ! -e "$rootfs_dir/var/cache/debconf/tmp.ci" ] || had_tmpci=1
        local status=0
        unshare --mount --propagation private -- bash -c '
            set -e
            root=$1 cache=$2
            shift 2
            mount -t proc proc "$root/proc"
            mount --rbind /dev "$root/dev"
            [ -f "$root/etc/resolv.conf" ] && [ ! -s "$root/etc/resolv.conf" ] && mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
            mount --bind "$cache/archives" "$root/var/cache/apt/archives"
            mount --bind "$cache/lists" "$root/var/lib/apt/lists"
            in_root() {
                chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
                    LC_ALL=C.UTF-8 ${SOURCE_DATE_EPOCH:+SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH} "$@"
            }
            if ! in_root apt-get -q update; then
                if compgen -G "$cache/lists/*_Packages*" >/dev/null; then
                    printf "WARNING: %s\n" "apt-get update failed: installing from the cached package lists" >&2
                else
                    printf "ERROR: %s\n" "apt-get update failed and the package cache has no lists to install from" >&2
                    exit 1
                fi
            fi
            in_root apt-get -q -y --no-install-recommends install -- "$@"
        ' apt-install-into "$rootfs_dir" "$cache" "$@" || status=$?
        for i in "${!kept[@]}"; do chown "${kept_owner[$i]}" -- "${kept[$i]}" 2>/dev/null || true; done
        [ "${#made[@]}" -eq 0 ] || rm -rf -- "${made[@]}"
        [ -z "$scratch" ] || rm -rf -- "$scratch"
        [ "$status" = 0 ] || die "apt-get install in $rootfs_dir failed (exit $status): $*"
        # mmdebstrap's clean-up (cleanup/apt, cleanup/reproducible, cleanup/run, cleanup/tmp), as after a cold build.
        rm -f "$rootfs_dir"/var/cache/apt/*.bin "$rootfs_dir"/var/log/dpkg.log "$rootfs_dir"/var/log/apt/history.log \
            "$rootfs_dir"/var/log/apt/term.log "$rootfs_dir"/var/log/alternatives.log "$rootfs_dir"/var/cache/ldconfig/aux-cache \
            "$rootfs_dir"/var/log/apt/eipp.log.xz "$rootfs_dir"/var/lib/dbus/machine-id
        [ -n "$had_tmpci" ] || rmdir "$rootfs_dir/var/cache/debconf/tmp.ci" 2>/dev/null || true
        [ ! -s "$rootfs_dir/etc/machine-id" ] || : > "$rootfs_dir/etc/machine-id"
        find "$rootfs_dir/run" "$rootfs_dir/tmp" -mindepth 1 -maxdepth 1 ! -path "$rootfs_dir/run/lock" -exec rm -rf -- {} + 2>/dev/null || true
    }
    # dnf_cache_args: fills the array dnf_cache with the dnf options that keep dnf's downloads
    # (packages and repository metadata) in ROOTFS_PACKAGE_CACHE/dnf across builds. The cachedir
    # given on the command line is not moved below --installroot, so nothing reaches the tree.
    # metadata_expire=0: repomd.xml is asked for on every build (a few hundred bytes), so a
    # mirror update is seen as it is without the cache. Without a cache: keepcache off, dnf's default.
    dnf_cache_args() {
        dnf_cache=()
        local c=${ROOTFS_PACKAGE_CACHE:-}
        [ -n "$c" ] || return 0
        if [[ $c =~ [[:space:]] ]] || ! mkdir -p "$c/dnf" 2>/dev/null; then
            warn "the package cache $c cannot be used: building without it"
            return 0
        fi
        dnf_cache=(--setopt=keepcache=True "--setopt=cachedir=$c/dnf" --setopt=metadata_expire=0)
    }
    # dnf_cache_clean ROOTFS_DIR: dnf 4 writes its repository persistor (expired_repos.json) below
    # --installroot at the cachedir's own path. That copy of the cache path is removed from the tree,
    # from its first directory no installed package owns (rpm -qf), so the tree is what it is without
    # a cache. A symbolic link on the way stops it: nothing is removed through a link.
    dnf_cache_clean() {
        local root=$1 path="" part
        [ "${#dnf_cache[@]}" -gt 0 ] || return 0
        # Without a cache dnf makes /var/cache (its default cachedir's parent) in the tree, owned by a
        # package or not: so does a build with one, for the same tree.
        if [ ! -L "$root/var" ] && [ ! -e "$root/var/cache" ]; then mkdir -p -m 0755 "$root/var/cache"; fi
        local -a parts=()
        IFS=/ read -r -a parts <<< "${ROOTFS_PACKAGE_CACHE#/}/dnf"
        for part in "${parts[@]}"; do
            [ -n "$part" ] || continue
            path+="/$part"
            if [ -L "$root$path" ] || [ ! -d "$root$path" ]; then return 0; fi
            if ! check_program rpm; then
                warn "no rpm on this host: dnf's $path/expired_repos.json is left in the tree"
                return 0
            fi
            if ! rpm --root "$root" --dbpath "${RPM_DBPATH:-/usr/lib/sysimage/rpm}" -qf "$path" >/dev/null 2>&1; then
                rm -rf -- "${root:?}$path"
                return 0
            fi
        done
    }
    # dnf_tidy ROOTFS_DIR: what a dnf --installroot run leaves in the tree that is not the guest's:
    # dnf's caches and logs, the copy of the package cache's path (dnf_cache_clean), dnf's history
    # database (a log of this build's transaction, with the times dnf ran it: two builds never
    # agree on it, whatever SOURCE_DATE_EPOCH says) and rpm's SQLite shared-memory index (rebuilt
    # by SQLite on the next open; its bytes are whatever the last process left in memory). The
    # RPM database itself stays: it is the guest's package state.
    dnf_tidy() {
        local root=$1
        dnf_cache_clean "$root"
        rm -rf -- "$root"/var/cache/dnf "$root"/var/cache/libdnf5 "$root"/var/log/dnf*.log "$root"/var/log/hawkey.log \
            "$root"/var/lib/dnf/history.sqlite "$root"/var/lib/dnf/history.sqlite-shm "$root"/var/lib/dnf/history.sqlite-wal \
            "$root${RPM_DBPATH:-/usr/lib/sysimage/rpm}"/rpmdb.sqlite-shm
    }
    # apk_cache_args: fills the array apk_cache with apk's cache option: --cache-dir
    # ROOTFS_PACKAGE_CACHE/apk (an absolute path, outside --root), else --no-cache.
    apk_cache_args() {
        apk_cache=(--no-cache)
        local c=${ROOTFS_PACKAGE_CACHE:-}
        [ -n "$c" ] || return 0
        if [[ $c =~ [[:space:]] ]] || ! mkdir -p "$c/apk" 2>/dev/null; then
            warn "the package cache $c cannot be used: building without it"
            return 0
        fi
        apk_cache=(--cache-dir "$c/apk")
    }
    # print_command CMD ARGS...: prints a command as a shell would read it (plan_rootfs, logs).
    print_command() {
        local a out=""
        for a in "$@"; do
            if [[ -n $a && $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
        done
        printf '%s\n' "${out# }"
    }
    """# + "\n" + KataLib.text

    /// Runs build_rootfs: helpers, config and library are sourced leniently
    /// (Kata's config.sh files end in tests that may be false), then the hook
    /// itself runs under Kata's rootfs.sh options: errexit, errtrace, pipefail.
    /// Not nounset: hooks written for Kata read variables Kata never sets.
    /// Without rootfs_lib.sh the helpers' default (dnf) build_rootfs runs, as in Kata.
    /// Paths arrive as arguments.
    public static let runnerScript = runner(calling: "build_rootfs")

    /// Runs the optional extend_rootfs ROOTFS_DIR PACKAGES... (incremental extra packages): the
    /// tree is a copy of a cached build whose only difference is fewer extra packages, and the
    /// hook installs just the new ones into it (apt in the tree, dnf --installroot, apk --root).
    /// Sourced and run like build_rootfs; a library without it is never given a cached base
    /// (the planner asks `extendProbeScript` first).
    public static let extendRunnerScript = runner(calling: "extend_rootfs")

    /// The runner for one of the hook's functions (a fixed name of ours, never guest text).
    static func runner(calling function: String) -> String {
        #"""
        __rootfs_helpers=$1 __rootfs_config=$2 __rootfs_lib=$3
        shift 3
        source "$__rootfs_helpers"
        source "$__rootfs_config" || true
        if [ -e "$__rootfs_lib" ]; then
            unset -f build_rootfs plan_rootfs extend_rootfs
            source "$__rootfs_lib"
        fi
        declare -F \#(function) >/dev/null || die "$__rootfs_lib does not define \#(function)()"
        set -o errexit -o errtrace -o pipefail
        [ -n "${DEBUG:-}" ] && set -x
        \#(function) "$@"
        """#
    }

    /// Exit 0 when the distro's library defines extend_rootfs(), 3 when it does not.
    public static let extendProbeScript = text + "\n" + #"""
    __rootfs_config=$1 __rootfs_lib=$2
    source "$__rootfs_config" >/dev/null 2>&1 || true
    if [ -e "$__rootfs_lib" ]; then
        unset -f build_rootfs plan_rootfs extend_rootfs
        source "$__rootfs_lib" >/dev/null 2>&1
    fi
    declare -F extend_rootfs >/dev/null || exit 3
    """#

    /// Runs the optional plan_rootfs() (`rootfs build --dry-run`, and a check
    /// before every build): it prints the commands build_rootfs would run and
    /// changes nothing. Exit 3 means the library has no plan_rootfs().
    /// The helpers come first in the script itself: a dry run writes no file.
    public static let planScript = text + "\n" + #"""
    __rootfs_config=$1 __rootfs_lib=$2
    shift 2
    source "$__rootfs_config" || true
    if [ -e "$__rootfs_lib" ]; then
        unset -f build_rootfs plan_rootfs
        source "$__rootfs_lib"
    fi
    declare -F plan_rootfs >/dev/null || exit 3
    set -o errexit -o errtrace -o pipefail
    plan_rootfs "$@"
    """#
}
