# Ubuntu guest OS: bootstrapped with mmdebstrap from an Ubuntu archive, variant minbase.
# Every value can be overridden from the environment:
#   REPO_URL=http://<your Ubuntu mirror>/ubuntu OS_VERSION=noble rootfs build ubuntu
OS_NAME=ubuntu
# 26.04 LTS (resolute); 24.04 LTS is noble.
OS_VERSION=${OS_VERSION:-resolute}

# systemd starts the agent, or (AGENT_INIT=yes / --agent-init) the agent is /sbin/init.
INIT_PROCESS=${INIT_PROCESS:-systemd}
if [ "${AGENT_INIT:-no}" = yes ]; then INIT_PROCESS=agent; fi

# The packages of the guest, on top of the minbase variant (EXTRA_PKG adds more).
if [ -z "${PACKAGES+set}" ]; then
    PACKAGES="chrony iptables"
    if [ "$INIT_PROCESS" = systemd ]; then PACKAGES="systemd systemd-sysv dbus $PACKAGES"; fi
fi

# The Ubuntu archive to bootstrap from. There is no built-in default: set
# REPO_URL (or MIRROR) to your Ubuntu mirror, for example http://<mirror>/ubuntu
# (ports architectures: http://<mirror>/ubuntu-ports).
REPO_URL=${REPO_URL:-${MIRROR:-}}
# The archive components.
COMPONENTS=${COMPONENTS:-main,universe}
# A keyring to check the archive's Release file with (mmdebstrap --keyring);
# empty: the host's keyrings (the ubuntu-keyring / ubuntu-archive-keyring package).
KEYRING=${KEYRING:-}

ARCH_EXCLUDE_LIST=""

# What this host needs to run build_rootfs (alternatives separated by |).
HOST_TOOLS="mmdebstrap"
