# CentOS Stream guest OS: installed with dnf --installroot from a CentOS Stream mirror.
# Every value can be overridden from the environment:
#   REPO_URL=http://<your CentOS Stream mirror>/10-stream \
#   GPG_KEY_URL=file:///path/to/RPM-GPG-KEY-centosofficial rootfs build centos
OS_NAME=centos
# CentOS Stream 10 (Stream 9 is supported too: OS_VERSION=9).
OS_VERSION=${OS_VERSION:-10}

# systemd starts the agent, or (AGENT_INIT=yes / --agent-init) the agent is /sbin/init.
INIT_PROCESS=${INIT_PROCESS:-systemd}
if [ "${AGENT_INIT:-no}" = yes ]; then INIT_PROCESS=agent; fi

# The guest's packages (EXTRA_PKG adds more).
if [ -z "${PACKAGES+set}" ]; then
    PACKAGES="chrony iptables-nft"
    if [ "$INIT_PROCESS" = systemd ]; then PACKAGES="systemd dbus-broker $PACKAGES"; fi
fi

# The repositories. REPO_URL is the root of a stream on your mirror (the
# directory holding BaseOS/ and AppStream/, for example http://<mirror>/10-stream);
# each of REPOS is added as REPO_URL/<repo>/$basearch/os/.
# Or METALINK: @REPO@ in it is replaced by the lower-case repository name.
# There is no built-in default: one of REPO_URL and METALINK must be set.
REPO_URL=${REPO_URL:-${MIRROR:-}}
METALINK=${METALINK:-}
REPOS=${REPOS:-BaseOS AppStream}
# The key the packages are signed with (a URL dnf can read: https://, file://).
# Without it the repositories are used with gpgcheck=0, and the build warns.
GPG_KEY_URL=${GPG_KEY_URL:-}

# Where the guest's RPM database goes (Stream 9: /var/lib/rpm).
if [ -z "${RPM_DBPATH:-}" ]; then
    if [ "$OS_VERSION" = 9 ]; then RPM_DBPATH=/var/lib/rpm; else RPM_DBPATH=/usr/lib/sysimage/rpm; fi
fi

ARCH_EXCLUDE_LIST=""

# What this host needs to run build_rootfs (alternatives separated by |).
HOST_TOOLS="dnf|dnf5"
