# build_rootfs ROOTFS_DIR: bootstraps Debian OS_VERSION into ROOTFS_DIR.
# Environment: OS_VERSION, PACKAGES, EXTRA_PKGS, REPO_URL, ARCH, ROOTFS_PACKAGE_CACHE (see README: the hook contract).
# plan_rootfs ROOTFS_DIR prints the same command without running it (rootfs build --dry-run,
# and the check before every build).

# _debian_uid: the user build_rootfs runs as (plan_rootfs runs on the host: rootfs tells it
# ROOTFS_HOOK_UID, 0 when the hook will run in a builder container, as root).
_debian_uid() { printf '%s' "${ROOTFS_HOOK_UID:-$EUID}"; }

# _debian_require_subids: mmdebstrap's unshare mode maps the guest's users onto the caller's
# subordinate ids; without a range in /etc/subuid and /etc/subgid it fails only after its
# setup ("W: no entry in /etc/subuid"). Checked up front, with the fix.
_debian_require_subids() {
    local user uid file missing=""
    uid=$EUID
    user=$(id -un 2>/dev/null || true)
    for file in /etc/subuid /etc/subgid; do
        # An entry names the user or its uid: NAME:START:COUNT.
        if ! { [ -r "$file" ] && grep -Eq "^(${user:-$uid}|$uid):[0-9]+:[0-9]+$" "$file"; }; then
            missing+="${missing:+ and }$file"
        fi
    done
    [ -z "$missing" ] && return 0
    hint "as root: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ${user:-$uid} (any free range of 65536 ids), or build as root, or with --docker"
    die "building Debian as the ordinary user ${user:-$uid} (uid $uid) runs mmdebstrap --mode=unshare, which needs a subordinate id range for ${user:-$uid} in $missing: there is none"
}

# _debian_command ROOTFS_DIR: fills the array debian_cmd with the bootstrap command line
# (used by build_rootfs and plan_rootfs: the plan is the command that runs).
_debian_command() {
    local rootfs_dir=$1
    local -a packages=()
    # read -a splits on blanks without globbing: package names stay literal words.
    read -r -a packages <<< "${PACKAGES:-} ${EXTRA_PKGS:-}"
    local include=""
    if [ "${#packages[@]}" -gt 0 ]; then
        include=$(IFS=,; printf '%s' "${packages[*]}")
    fi
    local -a mirror=()
    [ -n "${REPO_URL:-}" ] && mirror=("$REPO_URL")

    # mmdebstrap when this host has it, and in a builder container (its image installs it).
    if check_program mmdebstrap || ! check_program debootstrap; then
        debian_cmd=(mmdebstrap --variant=minbase
            --aptopt='Acquire::Languages "none"'
            --dpkgopt='path-exclude=/usr/share/man/*'
            --dpkgopt='path-exclude=/usr/share/doc/*'
            --dpkgopt='path-include=/usr/share/doc/*/copyright'
            --dpkgopt='path-exclude=/usr/share/locale/*'
            --dpkgopt='path-exclude=/usr/share/info/*')
        [ -n "$include" ] && debian_cmd+=("--include=$include")
        # DEB_ARCH (rootfs sets it from --arch/ARCH): another architecture's maintainer scripts
        # run through qemu-user, which rootfs has set up in binfmt_misc before the hook runs.
        [ -n "${DEB_ARCH:-}" ] && debian_cmd+=("--architectures=$DEB_ARCH")
        # rootfs's package cache (ROOTFS_PACKAGE_CACHE), when there is one: see hook-helpers.sh.
        local -a mmdebstrap_cache=()
        mmdebstrap_cache_args
        debian_cmd+=("${mmdebstrap_cache[@]}")
        # Reproducible: mmdebstrap copies the host's /etc/hostname and /etc/resolv.conf; drop them
        # and any cache or log that would carry times (mmdebstrap removes most with SOURCE_DATE_EPOCH).
        debian_cmd+=(--customize-hook='rm -f "$1"/etc/hostname "$1"/etc/resolv.conf "$1"/var/cache/ldconfig/aux-cache "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log "$1"/var/log/apt/history.log "$1"/var/log/apt/term.log "$1"/var/log/apt/eipp.log.xz')
        local target=$rootfs_dir
        if [ "$(_debian_uid)" != 0 ]; then
            # Rootless: mmdebstrap's unshare mode (subuids from /etc/subuid) writes a tar with real owners.
            [ -n "${ROOTFS_TAR:-}" ] || die "building Debian as an ordinary user needs ROOTFS_TAR (rootfs sets it): run it through rootfs build"
            _debian_require_subids
            debian_cmd+=(--mode=unshare)
            target=$ROOTFS_TAR
        fi
        debian_cmd+=("$OS_VERSION" "$target" "${mirror[@]}")
    else
        [ "$(_debian_uid)" = 0 ] || die "debootstrap needs root; install mmdebstrap to build Debian as an ordinary user (unshare mode)"
        debian_cmd=(debootstrap --variant=minbase)
        [ -n "$include" ] && debian_cmd+=("--include=$include")
        [ -n "${DEB_ARCH:-}" ] && debian_cmd+=("--arch=$DEB_ARCH")
        debian_cmd+=("$OS_VERSION" "$rootfs_dir" "${mirror[@]}")
    fi
}

build_rootfs() {
    local rootfs_dir=$1
    check_program mmdebstrap || check_program debootstrap \
        || die "neither mmdebstrap nor debootstrap is installed: apt-get install mmdebstrap, or build with --docker"
    local -a debian_cmd=()
    _debian_command "$rootfs_dir"
    if [ "${debian_cmd[0]}" = mmdebstrap ]; then
        local -a packages=()
        read -r -a packages <<< "${PACKAGES:-} ${EXTRA_PKGS:-}"
        info "mmdebstrap ${OS_VERSION} ${DEB_ARCH:-} (${#packages[@]} packages on top of minbase)"
        "${debian_cmd[@]}"
    else
        info "debootstrap ${OS_VERSION} (mmdebstrap not found)"
        "${debian_cmd[@]}"
        rm -rf "$rootfs_dir"/var/lib/apt/lists/* "$rootfs_dir"/var/cache/apt/archives/*.deb
    fi
}

plan_rootfs() {
    local -a debian_cmd=()
    _debian_command "$1"
    print_command "${debian_cmd[@]}"
}

# extend_rootfs ROOTFS_DIR PACKAGES...: installs PACKAGES into a tree an earlier build_rootfs
# made (rootfs's tree cache: a build that only adds extra packages starts from the cached tree).
# The tree's own apt in a chroot, as root; see apt_install_into in hook-helpers.sh.
extend_rootfs() {
    local rootfs_dir=$1
    shift
    info "apt-get install into the cached tree: $*"
    apt_install_into "$rootfs_dir" "$@"
}
