# Debian guest OS: bootstrapped with mmdebstrap (or debootstrap), variant minbase.
# Every value can be overridden from the environment: OS_VERSION=bookworm rootfs build debian
OS_NAME=debian
OS_VERSION=${OS_VERSION:-trixie}

# systemd starts the agent, or (AGENT_INIT=yes / --agent-init) the agent is /sbin/init.
INIT_PROCESS=${INIT_PROCESS:-systemd}
if [ "${AGENT_INIT:-no}" = yes ]; then INIT_PROCESS=agent; fi

# The packages of the guest, on top of the minbase variant (EXTRA_PKG adds more).
if [ -z "${PACKAGES+set}" ]; then
    if [ "$INIT_PROCESS" = systemd ]; then PACKAGES="systemd systemd-sysv"; else PACKAGES=""; fi
fi

# Empty: the bootstrap tool's own default mirror. A URL (for example a snapshot) pins it.
REPO_URL=${REPO_URL:-}

ARCH_EXCLUDE_LIST=""

# What this host needs to run build_rootfs (alternatives separated by |).
HOST_TOOLS="mmdebstrap|debootstrap"
