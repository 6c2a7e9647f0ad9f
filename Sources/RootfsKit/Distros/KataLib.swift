/// The part of the hook helpers that stands in for Kata osbuilder's caller:
/// what Kata's `rootfs.sh` sets before it sources a distro's `config.sh` and
/// `rootfs_lib.sh`, and the `scripts/lib.sh` functions Kata's hooks call.
///
/// Written for rootfs from what Kata's distro directories expect of their
/// caller (no Kata code is copied). It is sourced before config.sh wherever
/// config.sh is read (evaluation, plan, build, container), so a value means the
/// same thing everywhere. Every default uses `:=`: a value from the caller's
/// environment or from rootfs (`SECCOMP=no rootfs build ...`) wins.
public enum KataLib {
    /// The names Kata's rootfs.sh gives the two files of a distro directory.
    public static let configFileName = "config.sh"
    public static let libraryFileName = "rootfs_lib.sh"

    /// Kata's `LIBC` default for an architecture: musl, except where Rust has no
    /// musl target (ppc64le, s390x), where Kata forces gnu.
    public static func defaultLibc(architecture: String) -> String {
        ["ppc64le", "s390x"].contains(architecture) ? "gnu" : "musl"
    }

    public static let text = #"""
    # --- Kata osbuilder's caller environment (rootfs.sh and scripts/lib.sh, as hooks see them) ---
    # script_dir: the directory holding the distro directories, so that Kata's debian can
    # `source "${script_dir}/ubuntu/${CONFIG_SH}"`. rootfs passes it; this is the fallback.
    : "${script_dir:=${CONFIG_DIR:+$(dirname -- "$CONFIG_DIR")}}"
    CONFIG_SH=config.sh
    LIB_SH=rootfs_lib.sh
    # Kata's defaults. LIBC follows the architecture as Kata's rootfs.sh sets it.
    : "${ARCH:=$(uname -m)}"
    case "$ARCH" in ppc64le|s390x) : "${LIBC:=gnu}" ;; *) : "${LIBC:=musl}" ;; esac
    : "${SECCOMP:=yes}" "${SELINUX:=no}" "${KERNEL_MODULES_DIR:=}" "${AGENT_INIT:=no}"
    : "${AGENT_BIN:=kata-agent}" "${AGENT_VERSION:=}" "${AGENT_POLICY:=no}" "${AGENT_SOURCE_BIN:=}" "${AGENT_TARBALL:=}"
    : "${MEASURED_ROOTFS:=no}" "${CONFIDENTIAL_GUEST:=no}" "${OSBUILDER_VERSION:=unknown}" "${DOCKER_RUNTIME:=runc}"
    : "${DNF_CONF:=}" "${DISTRO_REPO:=}" "${PKG_MANAGER:=}" "${BASE_URL:=}" "${METALINK:=}" "${GPG_KEY_URL:=}" "${GPG_KEY_FILE:=}"
    : "${EXTRA_PKGS:=}" "${REPO_URL:=}" "${REPO_URL_X86_64:=}" "${REPO_COMPONENTS:=}" "${IMAGE_REGISTRY:=}"
    : "${http_proxy:=}" "${https_proxy:=}" "${INSIDE_CONTAINER:=}" "${BUILD_VARIANT:=}" "${ROOTFS_ONLY:=}"
    : "${KATA_REPO:=github.com/kata-containers/kata-containers}" "${GOPATH:=${HOME:-/root}/go}"
    # error MSG: Kata's non-fatal error line.
    error() { printf 'ERROR: %s\n' "$*" >&2; }
    # Kata's container hooks: nothing to do around rootfs's own engine handling.
    before_starting_container() { return 0; }
    after_stopping_container() { return 0; }

    # get_package_version_from_kata_yaml PATH: a value of Kata's versions.yaml, or empty.
    # The file is KATA_VERSIONS_FILE, else versions.yaml three levels above script_dir
    # (where a Kata checkout keeps it). Without the file the answer is empty, as Kata's
    # callers read "null": devkit then builds with its NVIDIA helper inert.
    get_package_version_from_kata_yaml() {
        local key=$1 file=${KATA_VERSIONS_FILE:-${script_dir:-.}/../../../versions.yaml} value=""
        if [ ! -f "$file" ]; then
            printf 'WARNING: %s\n' "no Kata versions.yaml at $file (set KATA_VERSIONS_FILE): $key is empty" >&2
            return 0
        fi
        check_program yq || die "reading $key from $file needs yq on this host (Debian package: yq)"
        if yq --version 2>&1 | grep -q 'mikefarah\|version v\?4'; then
            value=$(yq e ".$key" - < "$file")
        elif yq --version 2>&1 | grep -q 'version v\?[1-3]\.'; then
            value=$(yq r -X - "$key" < "$file")
        else
            # The jq wrapper (Debian's yq package).
            value=$(yq -r ".$key" "$file")
        fi
        [ "$value" = null ] && value=""
        printf '%s\n' "$value"
    }
    detect_rust_version() { RUST_VERSION=$(get_package_version_from_kata_yaml languages.rust.meta.newest-version); [ -n "$RUST_VERSION" ]; }

    # generate_dnf_config: writes the dnf configuration Kata's default build_rootfs uses to
    # ${DNF_CONF}: one repository from BASE_URL (rootfs also takes REPO_URL) or METALINK,
    # no host repositories (reposdir points at an empty directory).
    generate_dnf_config() {
        [ -n "${DNF_CONF:-}" ] || die "generate_dnf_config: DNF_CONF is empty"
        local url=${BASE_URL:-${REPO_URL:-}} empty
        empty=$(dirname -- "$DNF_CONF")/repos.d
        mkdir -p "$empty"
        {
            printf '[main]\nreposdir=%s\ninstall_weak_deps=False\n\n' "$empty"
            printf '[base]\nname=%s-%s base\nreleasever=%s\n' "${OS_NAME:-distro}" "${OS_VERSION:-}" "${OS_VERSION:-}"
            if [ -n "$url" ]; then printf 'baseurl=%s\n' "$url"; elif [ -n "${METALINK:-}" ]; then printf 'metalink=%s\n' "$METALINK"; fi
            __rootfs_kata_gpg
            if [ "${SELINUX:-no}" = yes ] && [ -n "${METALINK_APPSTREAM:-}" ]; then
                printf '\n[appstream]\nname=%s-%s appstream\nreleasever=%s\nmetalink=%s\n' \
                    "${OS_NAME:-distro}" "${OS_VERSION:-}" "${OS_VERSION:-}" "$METALINK_APPSTREAM"
                __rootfs_kata_gpg
            fi
        } > "$DNF_CONF"
    }
    # The repository's key: Kata downloads GPG_KEY_URL into the distro directory; rootfs
    # keeps it next to DNF_CONF (the distro directory is read-only in a container).
    __rootfs_kata_gpg() {
        if [ -z "${GPG_KEY_URL:-}" ]; then
            printf 'gpgcheck=0\n'
            return 0
        fi
        local key
        key=$(dirname -- "$DNF_CONF")/${GPG_KEY_FILE:-repository.key}
        if [ -n "${GPG_KEY_FILE:-}" ] && [ -f "${CONFIG_DIR:-.}/$GPG_KEY_FILE" ]; then
            cp -- "${CONFIG_DIR}/$GPG_KEY_FILE" "$key"
        elif [ ! -f "$key" ]; then
            curl -fsSL -o "$key" -- "$GPG_KEY_URL" >&2 || die "cannot download the repository key $GPG_KEY_URL"
        fi
        printf 'gpgcheck=1\ngpgkey=file://%s\n' "$key"
    }

    # The package manager of Kata's default build_rootfs: PKG_MANAGER (words), else dnf, else yum.
    __rootfs_kata_pkg_manager() {
        if [ -n "${PKG_MANAGER:-}" ]; then printf '%s\n' "$PKG_MANAGER"
        elif check_program dnf; then echo dnf
        elif check_program yum; then echo yum
        else die "neither dnf nor yum is installed (Kata's default build_rootfs needs one; Debian package: dnf)"
        fi
    }
    # The repository check of the default build: without one dnf would fail after writing.
    __rootfs_kata_require_repository() {
        [ -n "${DNF_CONF:-}" ] || [ -n "${DISTRO_REPO:-}" ] || [ -n "${BASE_URL:-}${REPO_URL:-}${METALINK:-}" ] ||
            die "this distro has no rootfs_lib.sh, so Kata's default build_rootfs (dnf --installroot) installs it, and it has no repository: set BASE_URL (or REPO_URL) or METALINK in config.sh or the environment, DNF_CONF to a dnf configuration, or DISTRO_REPO=yes for the host's repositories"
    }
    # __rootfs_kata_dnf_command PKG_MANAGER ROOTFS CONF: the command, one word a line.
    __rootfs_kata_dnf_command() {
        local -a pm pkgs
        read -r -a pm <<< "$1"
        read -r -a pkgs <<< "${EXTRA_PKGS:-} ${PACKAGES[*]:-}"
        printf '%s\n' "${pm[@]}" -y "--installroot=$2" --noplugins
        if [ -n "$3" ]; then printf '%s\n' "--config=$3"; else printf '%s\n' "--releasever=${OS_VERSION:-}"; fi
        printf '%s\n' install "${pkgs[@]}"
    }

    # build_rootfs ROOTFS_DIR: Kata's default for a distro directory without rootfs_lib.sh
    # (Kata's centos): dnf or yum --installroot from the repository config.sh names.
    # A rootfs_lib.sh replaces it (and plan_rootfs below) with its own.
    build_rootfs() {
        local root=${1:-}
        [ -n "$root" ] || die "need rootfs"
        check_root
        __rootfs_kata_require_repository
        local conf=${DNF_CONF:-} scratch="" pm
        local -a command
        pm=$(__rootfs_kata_pkg_manager) || exit 1
        scratch=$(mktemp -d "${TMPDIR:-/tmp}/rootfs-dnf.XXXXXX")
        if { [ -z "$conf" ] || [ ! -f "$conf" ]; } && [ -z "${DISTRO_REPO:-}" ]; then
            conf=$scratch/kata-${OS_NAME:-distro}-dnf.conf
            DNF_CONF=$conf generate_dnf_config
        fi
        [ -n "${DISTRO_REPO:-}" ] && conf=""
        # The guest's RPM database where its rpm looks (RPM_DBPATH, default /var/lib/rpm),
        # whatever this host's rpm defaults to (Debian's: ~/.rpmdb): dnf reads ~/.rpmmacros.
        mkdir -p "$scratch/home"
        printf '%%_dbpath %s\n' "${RPM_DBPATH:-/var/lib/rpm}" > "$scratch/home/.rpmmacros"
        mkdir -p "$root"
        mapfile -t command < <(__rootfs_kata_dnf_command "$pm" "$root" "$conf")
        info "install packages for rootfs: $(print_command "${command[@]}")"
        local status=0
        HOME="$scratch/home" "${command[@]}" || status=$?
        rm -rf -- "$scratch"
        [ "$status" = 0 ] || die "${command[0]} install failed (exit status $status)"
        # Kata trims documentation; rootfs also drops the package cache the guest never needs.
        rm -rf "$root"/usr/share/{bash-completion,cracklib,doc,info,locale,man,misc,pixmaps,terminfo,zoneinfo,zsh}
        rm -rf "$root"/var/cache/dnf "$root"/var/cache/yum "$root"/var/log/dnf*.log "$root"/var/log/hawkey.log
    }
    # plan_rootfs ROOTFS_DIR: the default build's command, without running it.
    plan_rootfs() {
        __rootfs_kata_require_repository
        local conf=${DNF_CONF:-} pm
        pm=$(__rootfs_kata_pkg_manager) || exit 1
        if { [ -z "$conf" ] || [ ! -f "$conf" ]; } && [ -z "${DISTRO_REPO:-}" ]; then conf="<generated: kata-${OS_NAME:-distro}-dnf.conf>"; fi
        [ -n "${DISTRO_REPO:-}" ] && conf=""
        local -a command
        mapfile -t command < <(__rootfs_kata_dnf_command "$pm" "$1" "$conf")
        print_command "${command[@]}"
        [ -n "${GPG_KEY_URL:-}" ] || warn "no GPG_KEY_URL: the generated dnf configuration has gpgcheck=0"
    }
    """#
}
