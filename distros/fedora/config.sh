# Fedora guest OS: installed with dnf --installroot from a Fedora repository.
# Every value can be overridden from the environment:
#   REPO_URL='http://<your Fedora mirror>/fedora/linux/releases/$releasever/Everything/$basearch/os/' \
#   GPG_KEY_URL=file:///path/to/RPM-GPG-KEY-fedora-44-primary rootfs build fedora
OS_NAME=fedora
OS_VERSION=${OS_VERSION:-44}

# systemd starts the agent, or (AGENT_INIT=yes / --agent-init) the agent is /sbin/init.
INIT_PROCESS=${INIT_PROCESS:-systemd}
if [ "${AGENT_INIT:-no}" = yes ]; then INIT_PROCESS=agent; fi

# The guest's packages (EXTRA_PKG adds more).
if [ -z "${PACKAGES+set}" ]; then
    PACKAGES="chrony iptables-nft"
    if [ "$INIT_PROCESS" = systemd ]; then PACKAGES="systemd dbus-broker $PACKAGES"; fi
fi

# The repository: REPO_URL (a baseurl; dnf expands $releasever and $basearch)
# or METALINK. There is no built-in default: one of them must be set.
REPO_URL=${REPO_URL:-${MIRROR:-}}
METALINK=${METALINK:-}
# The key the packages are signed with (a URL dnf can read: https://, file://).
# Without it the repository is used with gpgcheck=0, and the build warns.
GPG_KEY_URL=${GPG_KEY_URL:-}

# Where the guest's RPM database goes.
RPM_DBPATH=${RPM_DBPATH:-/usr/lib/sysimage/rpm}

ARCH_EXCLUDE_LIST=""

# What this host needs to run build_rootfs (alternatives separated by |).
HOST_TOOLS="dnf|dnf5"
