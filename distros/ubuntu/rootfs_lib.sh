# build_rootfs ROOTFS_DIR: bootstraps Ubuntu OS_VERSION into ROOTFS_DIR with mmdebstrap.
# Environment: OS_VERSION, PACKAGES, EXTRA_PKGS, REPO_URL, COMPONENTS, KEYRING, ARCH
# (see docs/HOOKS.md). plan_rootfs prints the same command without running it.

# Fills the array ubuntu_cmd with the mmdebstrap command line.
_ubuntu_command() {
    local rootfs_dir=$1
    [ -n "${REPO_URL:-}" ] || die "ubuntu needs REPO_URL: set REPO_URL (or MIRROR) to your Ubuntu mirror, for example REPO_URL=http://<mirror>/ubuntu (rootfs has no built-in mirror)"
    local -a packages=()
    # read -a splits on blanks without globbing: package names stay literal words.
    read -r -a packages <<< "${PACKAGES:-} ${EXTRA_PKGS:-}"
    ubuntu_cmd=(mmdebstrap --variant=minbase "--components=${COMPONENTS:-main,universe}"
        --aptopt='Acquire::Languages "none"'
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/locale/*')
    if [ "${#packages[@]}" -gt 0 ]; then
        ubuntu_cmd+=("--include=$(IFS=,; printf '%s' "${packages[*]}")")
    fi
    [ -n "${KEYRING:-}" ] && ubuntu_cmd+=("--keyring=$KEYRING")
    # DEB_ARCH (rootfs sets it from --arch/ARCH, as Kata's hook reads it): arm64, ppc64el, s390x...
    [ -n "${DEB_ARCH:-}" ] && ubuntu_cmd+=("--architectures=$DEB_ARCH")
    # rootfs's package cache (ROOTFS_PACKAGE_CACHE), when there is one: see hook-helpers.sh.
    local -a mmdebstrap_cache=()
    mmdebstrap_cache_args
    ubuntu_cmd+=("${mmdebstrap_cache[@]}")
    ubuntu_cmd+=("$OS_VERSION" "$rootfs_dir" "$REPO_URL")
}

build_rootfs() {
    local -a ubuntu_cmd=()
    _ubuntu_command "$1"
    require_program mmdebstrap
    info "mmdebstrap ubuntu ${OS_VERSION} from ${REPO_URL}"
    "${ubuntu_cmd[@]}"
}

plan_rootfs() {
    local -a ubuntu_cmd=()
    _ubuntu_command "$1"
    print_command "${ubuntu_cmd[@]}"
}

# extend_rootfs ROOTFS_DIR PACKAGES...: installs PACKAGES into a tree an earlier build_rootfs
# made (rootfs's tree cache); the tree's own apt in a chroot (apt_install_into in hook-helpers.sh).
extend_rootfs() {
    local rootfs_dir=$1
    shift
    info "apt-get install into the cached tree: $*"
    apt_install_into "$rootfs_dir" "$@"
}
