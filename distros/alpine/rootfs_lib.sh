# build_rootfs ROOTFS_DIR: installs Alpine OS_VERSION into ROOTFS_DIR with
# apk --root ROOTFS_DIR --initdb add (see docs/DISTROS.md).
# Environment: OS_VERSION, PACKAGES, EXTRA_PKGS, REPO_URL, REPOSITORIES, APK_KEYS_DIR, ARCH.
# plan_rootfs prints the commands without running anything.

# Prints the repository URLs, one a line (also the guest's /etc/apk/repositories).
_alpine_repositories() {
    local branch=v$OS_VERSION repo
    [ "$OS_VERSION" = edge ] && branch=edge
    for repo in $REPOSITORIES; do printf '%s/%s/%s\n' "${REPO_URL%/}" "$branch" "$repo"; done
}

# Checks the settings and fills the array alpine_cmd with the apk command line.
_alpine_command() {
    local rootfs_dir=$1 url
    [ -n "${REPO_URL:-}" ] || die "alpine needs REPO_URL: set REPO_URL (or MIRROR) to your Alpine mirror's root, the directory holding v${OS_VERSION}/ (for example http://<mirror>/alpine; rootfs has no built-in mirror)"
    local -a packages=()
    # read -a splits on blanks without globbing: package names stay literal words.
    read -r -a packages <<< "${PACKAGES:-} ${EXTRA_PKGS:-}"
    [ "${#packages[@]}" -gt 0 ] || die "alpine: PACKAGES and EXTRA_PKGS are empty: nothing to install"
    local apk=apk
    check_program apk || { check_program apk.static && apk=apk.static; }
    # rootfs's package cache (ROOTFS_PACKAGE_CACHE): apk keeps its downloads there, outside --root.
    local -a apk_cache=()
    apk_cache_args
    alpine_cmd=("$apk" --root "$rootfs_dir" --initdb "${apk_cache[@]}" --arch "${ARCH:-$(uname -m)}")
    while read -r url; do alpine_cmd+=(--repository "$url"); done < <(_alpine_repositories)
    if [ ! -d "$APK_KEYS_DIR" ]; then
        warn "no signing keys in $APK_KEYS_DIR: apk runs with --allow-untrusted; set APK_KEYS_DIR to a directory of Alpine's keys to check the packages"
        alpine_cmd+=(--allow-untrusted)
    fi
    alpine_cmd+=(add -- "${packages[@]}")
}

build_rootfs() {
    local rootfs_dir=$1
    local -a alpine_cmd=()
    _alpine_command "$rootfs_dir"
    require_program "${alpine_cmd[0]}"
    mkdir -p "$rootfs_dir/etc/apk"
    # apk reads the trusted keys from inside the new root.
    if [ -d "$APK_KEYS_DIR" ]; then cp -R "$APK_KEYS_DIR" "$rootfs_dir/etc/apk/keys"; fi
    info "apk: alpine ${OS_VERSION} from ${REPO_URL}"
    "${alpine_cmd[@]}"
    _alpine_repositories > "$rootfs_dir/etc/apk/repositories"
}

plan_rootfs() {
    local -a alpine_cmd=()
    _alpine_command "$1"
    [ -d "$APK_KEYS_DIR" ] && print_command cp -R "$APK_KEYS_DIR" "$1/etc/apk/keys"
    print_command "${alpine_cmd[@]}"
}

# extend_rootfs ROOTFS_DIR PACKAGES...: installs PACKAGES into a tree an earlier build_rootfs
# made (rootfs's tree cache: a build that only adds extra packages starts from the cached tree).
# The same apk --root, given just the new packages and without --initdb (the tree's database stays).
extend_rootfs() {
    local rootfs_dir=$1
    shift
    local -a alpine_cmd=() cmd=()
    PACKAGES="$*" EXTRA_PKGS="" _alpine_command "$rootfs_dir"
    local a
    for a in "${alpine_cmd[@]}"; do [ "$a" = --initdb ] || cmd+=("$a"); done
    require_program "${cmd[0]}"
    info "apk add into the cached tree: $*"
    "${cmd[@]}"
}
