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
    public static let runnerScript = #"""
    __rootfs_helpers=$1 __rootfs_config=$2 __rootfs_lib=$3
    shift 3
    source "$__rootfs_helpers"
    source "$__rootfs_config" || true
    if [ -e "$__rootfs_lib" ]; then
        unset -f build_rootfs plan_rootfs
        source "$__rootfs_lib"
    fi
    declare -F build_rootfs >/dev/null || die "$__rootfs_lib does not define build_rootfs()"
    set -o errexit -o errtrace -o pipefail
    [ -n "${DEBUG:-}" ] && set -x
    build_rootfs "$@"
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
