# build_rootfs ROOTFS_DIR: installs CentOS Stream OS_VERSION into ROOTFS_DIR
# with dnf --installroot, from a generated dnf.conf (see docs/DISTROS.md).
# Environment: OS_VERSION, PACKAGES, EXTRA_PKGS, REPO_URL, METALINK, REPOS, GPG_KEY_URL, ARCH.
# plan_rootfs prints the dnf.conf and the command without running anything.

# Prints the dnf.conf: [main] and one section per repository of REPOS.
_centos_dnf_conf() {
    local reposdir=$1 repo id
    printf '[main]\n'
    printf 'reposdir=%s\n' "$reposdir"
    printf 'install_weak_deps=False\ntsflags=nodocs\nkeepcache=False\nbest=True\nskip_if_unavailable=False\n'
    for repo in $REPOS; do
        id=${repo,,}
        printf '\n[%s]\nname=CentOS Stream $releasever - %s\n' "$id" "$repo"
        if [ -n "${REPO_URL:-}" ]; then
            printf 'baseurl=%s/%s/$basearch/os/\n' "${REPO_URL%/}" "$repo"
        else
            printf 'metalink=%s\n' "${METALINK//@REPO@/$id}"
        fi
        if [ -n "${GPG_KEY_URL:-}" ]; then
            printf 'gpgcheck=1\ngpgkey=%s\n' "$GPG_KEY_URL"
        else
            printf 'gpgcheck=0\n'
        fi
    done
}

# Checks the settings and fills the array centos_cmd with the dnf command line.
_centos_command() {
    local rootfs_dir=$1 conf=$2 reposdir=$3 repo
    if [ -z "${REPO_URL:-}" ] && [ -z "${METALINK:-}" ]; then
        die "centos needs a repository: set REPO_URL to the stream directory of your CentOS Stream mirror (the one holding BaseOS/ and AppStream/, for example http://<mirror>/${OS_VERSION}-stream) or METALINK (rootfs has no built-in mirror)"
    fi
    [ -n "${REPOS// /}" ] || die "centos: REPOS is empty"
    if [ -z "${GPG_KEY_URL:-}" ]; then
        warn "no GPG_KEY_URL: the repositories are used with gpgcheck=0 (packages are not signature-checked); set GPG_KEY_URL to the CentOS key to check them"
    fi
    local -a packages=()
    # read -a splits on blanks without globbing: package names stay literal words.
    read -r -a packages <<< "${PACKAGES:-} ${EXTRA_PKGS:-}"
    [ "${#packages[@]}" -gt 0 ] || die "centos: PACKAGES and EXTRA_PKGS are empty: nothing to install"
    local dnf=dnf
    check_program dnf || { check_program dnf5 && dnf=dnf5; }
    centos_cmd=("$dnf" -y -q "--config=$conf" "--installroot=$rootfs_dir" "--releasever=$OS_VERSION"
        "--setopt=reposdir=$reposdir" --disablerepo='*')
    for repo in $REPOS; do centos_cmd+=("--enablerepo=${repo,,}"); done
    if [ -n "${ARCH:-}" ] && [ "$ARCH" != "$(uname -m)" ]; then centos_cmd+=("--forcearch=$ARCH"); fi
    # rootfs's package cache (ROOTFS_PACKAGE_CACHE): dnf keeps its downloads there, outside the tree.
    dnf_cache_args
    centos_cmd+=("${dnf_cache[@]}" install -- "${packages[@]}")
}

build_rootfs() {
    local rootfs_dir=$1
    # Global, not local: the EXIT trap runs after this function returned.
    _centos_work=$(mktemp -d)
    trap 'rm -rf "$_centos_work"' EXIT
    local work=$_centos_work
    mkdir -p "$work/repos.d"
    local -a centos_cmd=() dnf_cache=()
    _centos_command "$rootfs_dir" "$work/dnf.conf" "$work/repos.d"
    require_program "${centos_cmd[0]}"
    _centos_dnf_conf "$work/repos.d" > "$work/dnf.conf"
    # The guest's RPM database location, whatever the host's rpm defaults to
    # (Debian's rpm puts it in ~/.rpmdb): dnf reads ~/.rpmmacros.
    mkdir -p "$work/home"
    printf '%%_dbpath %s\n' "$RPM_DBPATH" > "$work/home/.rpmmacros"
    info "dnf: CentOS Stream ${OS_VERSION} from ${REPO_URL:-$METALINK}"
    HOME="$work/home" "${centos_cmd[@]}"
    # dnf's caches, logs and history are not part of the guest (hook-helpers.sh: dnf_tidy).
    dnf_tidy "$rootfs_dir"
}

plan_rootfs() {
    local -a centos_cmd=() dnf_cache=()
    local work=${TMPDIR:-/tmp}/tmp.XXXXXXXXXX
    _centos_command "$1" "$work/dnf.conf" "$work/repos.d"
    printf '# %s is a temporary directory (mktemp -d); %s/dnf.conf:\n' "$work" "$work"
    _centos_dnf_conf "$work/repos.d" | sed 's/^/#   /'
    print_command "${centos_cmd[@]}"
}

# extend_rootfs ROOTFS_DIR PACKAGES...: installs PACKAGES into a tree an earlier build_rootfs
# made (rootfs's tree cache: a build that only adds extra packages starts from the cached tree).
# The same dnf --installroot, given just the new packages: dnf adds them to the tree's RPM database.
extend_rootfs() {
    local rootfs_dir=$1
    shift
    PACKAGES="$*" EXTRA_PKGS="" build_rootfs "$rootfs_dir"
}
