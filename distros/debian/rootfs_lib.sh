# build_rootfs ROOTFS_DIR: bootstraps Debian OS_VERSION into ROOTFS_DIR.
# Environment: OS_VERSION, PACKAGES, EXTRA_PKGS, REPO_URL, ARCH, ROOTFS_PACKAGE_CACHE (see README: the hook contract).
build_rootfs() {
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

    if check_program mmdebstrap; then
        local -a args=(--variant=minbase
            --aptopt='Acquire::Languages "none"'
            --dpkgopt='path-exclude=/usr/share/man/*'
            --dpkgopt='path-exclude=/usr/share/doc/*'
            --dpkgopt='path-include=/usr/share/doc/*/copyright'
            --dpkgopt='path-exclude=/usr/share/locale/*'
            --dpkgopt='path-exclude=/usr/share/info/*')
        [ -n "$include" ] && args+=("--include=$include")
        # DEB_ARCH (rootfs sets it from --arch/ARCH): another architecture's maintainer scripts
        # run through qemu-user, which rootfs has set up in binfmt_misc before the hook runs.
        [ -n "${DEB_ARCH:-}" ] && args+=("--architectures=$DEB_ARCH")
        # rootfs's package cache (ROOTFS_PACKAGE_CACHE), when there is one: see hook-helpers.sh.
        local -a mmdebstrap_cache=()
        mmdebstrap_cache_args
        args+=("${mmdebstrap_cache[@]}")
        # Reproducible: mmdebstrap copies the host's /etc/hostname and /etc/resolv.conf; drop them
        # and any cache or log that would carry times (mmdebstrap removes most with SOURCE_DATE_EPOCH).
        args+=(--customize-hook='rm -f "$1"/etc/hostname "$1"/etc/resolv.conf "$1"/var/cache/ldconfig/aux-cache "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log "$1"/var/log/apt/history.log "$1"/var/log/apt/term.log "$1"/var/log/apt/eipp.log.xz')
        local target=$rootfs_dir
        if [ "$(id -u)" != 0 ]; then
            # Rootless: mmdebstrap's unshare mode (subuids from /etc/subuid) writes a tar with real owners.
            [ -n "${ROOTFS_TAR:-}" ] || die "building Debian as an ordinary user needs ROOTFS_TAR (rootfs sets it): run it through rootfs build"
            args+=(--mode=unshare)
            target=$ROOTFS_TAR
        fi
        info "mmdebstrap ${OS_VERSION} ${DEB_ARCH:-} (${#packages[@]} packages on top of minbase)"
        mmdebstrap "${args[@]}" "$OS_VERSION" "$target" "${mirror[@]}"
    elif check_program debootstrap; then
        [ "$(id -u)" = 0 ] || die "debootstrap needs root; install mmdebstrap to build Debian as an ordinary user (unshare mode)"
        local -a args=(--variant=minbase)
        [ -n "$include" ] && args+=("--include=$include")
        [ -n "${DEB_ARCH:-}" ] && args+=("--arch=$DEB_ARCH")
        info "debootstrap ${OS_VERSION} (mmdebstrap not found)"
        debootstrap "${args[@]}" "$OS_VERSION" "$rootfs_dir" "${mirror[@]}"
        rm -rf "$rootfs_dir"/var/lib/apt/lists/* "$rootfs_dir"/var/cache/apt/archives/*.deb
    else
        die "neither mmdebstrap nor debootstrap is installed: apt-get install mmdebstrap, or build with --docker"
    fi
}
