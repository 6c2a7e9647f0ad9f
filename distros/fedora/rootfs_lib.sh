# build_rootfs ROOTFS_DIR: installs Fedora OS_VERSION into ROOTFS_DIR with
# dnf --installroot, from a generated dnf.conf (see docs/DISTROS.md).
# Environment: OS_VERSION, PACKAGES, EXTRA_PKGS, REPO_URL, METALINK, GPG_KEY_URL, ARCH.
# plan_rootfs prints the dnf.conf and the command without running anything.

# Prints the dnf.conf: [main] and one repository.
_fedora_dnf_conf() {
    local reposdir=$1
    printf '[main]\n'
    printf 'reposdir=%s\n' "$reposdir"
    printf 'install_weak_deps=False\ntsflags=nodocs\nkeepcache=False\nbest=True\nskip_if_unavailable=False\n'
    printf '\n[fedora]\nname=Fedora $releasever - $basearch\n'
    if [ -n "${REPO_URL:-}" ]; then
        printf 'baseurl=%s\n' "$REPO_URL"
    else
        printf 'metalink=%s\n' "$METALINK"
    fi
    if [ -n "${GPG_KEY_URL:-}" ]; then
        printf 'gpgcheck=1\ngpgkey=%s\n' "$GPG_KEY_URL"
    else
        printf 'gpgcheck=0\n'
    fi
}

# Checks the settings and fills the array fedora_cmd with the dnf command line.
_fedora_command() {
    local rootfs_dir=$1 conf=$2 reposdir=$3
    if [ -z "${REPO_URL:-}" ] && [ -z "${METALINK:-}" ]; then
        die "fedora needs a repository: set REPO_URL to your Fedora mirror's baseurl (for example 'http://<mirror>/fedora/linux/releases/\$releasever/Everything/\$basearch/os/') or METALINK (rootfs has no built-in mirror)"
    fi
    if [ -z "${GPG_KEY_URL:-}" ]; then
        warn "no GPG_KEY_URL: the repository is used with gpgcheck=0 (packages are not signature-checked); set GPG_KEY_URL to the Fedora key to check them"
    fi
    local -a packages=()
    # read -a splits on blanks without globbing: package names stay literal words.
    read -r -a packages <<< "${PACKAGES:-} ${EXTRA_PKGS:-}"
    [ "${#packages[@]}" -gt 0 ] || die "fedora: PACKAGES and EXTRA_PKGS are empty: nothing to install"
    local dnf=dnf
    check_program dnf || { check_program dnf5 && dnf=dnf5; }
    fedora_cmd=("$dnf" -y -q "--config=$conf" "--installroot=$rootfs_dir" "--releasever=$OS_VERSION"
        "--setopt=reposdir=$reposdir" --disablerepo='*' --enablerepo=fedora)
    if [ -n "${ARCH:-}" ] && [ "$ARCH" != "$(uname -m)" ]; then fedora_cmd+=("--forcearch=$ARCH"); fi
    # rootfs's package cache (ROOTFS_PACKAGE_CACHE): dnf keeps its downloads there, outside the tree.
    dnf_cache_args
    fedora_cmd+=("${dnf_cache[@]}" install -- "${packages[@]}")
}

build_rootfs() {
    local rootfs_dir=$1
    # Global, not local: the EXIT trap runs after this function returned.
    _fedora_work=$(mktemp -d)
    trap 'rm -rf "$_fedora_work"' EXIT
    local work=$_fedora_work
    mkdir -p "$work/repos.d"
    local -a fedora_cmd=() dnf_cache=()
    _fedora_command "$rootfs_dir" "$work/dnf.conf" "$work/repos.d"
    require_program "${fedora_cmd[0]}"
    _fedora_dnf_conf "$work/repos.d" > "$work/dnf.conf"
    # The guest's RPM database location, whatever the host's rpm defaults to
    # (Debian's rpm puts it in ~/.rpmdb): dnf reads ~/.rpmmacros.
    mkdir -p "$work/home"
    printf '%%_dbpath %s\n' "$RPM_DBPATH" > "$work/home/.rpmmacros"
    info "dnf: fedora ${OS_VERSION}, ${#fedora_cmd[@]} arguments, from ${REPO_URL:-$METALINK}"
    HOME="$work/home" "${fedora_cmd[@]}"
    # dnf's caches, logs and history are not part of the guest (hook-helpers.sh: dnf_tidy).
    dnf_tidy "$rootfs_dir"
}

plan_rootfs() {
    local -a fedora_cmd=() dnf_cache=()
    local work=${TMPDIR:-/tmp}/tmp.XXXXXXXXXX
    _fedora_command "$1" "$work/dnf.conf" "$work/repos.d"
    printf '# %s is a temporary directory (mktemp -d); %s/dnf.conf:\n' "$work" "$work"
    _fedora_dnf_conf "$work/repos.d" | sed 's/^/#   /'
    print_command "${fedora_cmd[@]}"
}

# extend_rootfs ROOTFS_DIR PACKAGES...: installs PACKAGES into a tree an earlier build_rootfs
# made (rootfs's tree cache: a build that only adds extra packages starts from the cached tree).
# The same dnf --installroot, given just the new packages: dnf adds them to the tree's RPM database.
extend_rootfs() {
    local rootfs_dir=$1
    shift
    PACKAGES="$*" EXTRA_PKGS="" build_rootfs "$rootfs_dir"
}
