# @DISTRO@ guest OS. config.sh is sourced by bash before build_rootfs() runs;
# every value here can be overridden from the environment.
OS_NAME=@DISTRO@
OS_VERSION=${OS_VERSION:-@OS_VERSION@}

# systemd starts the agent, or (AGENT_INIT=yes / --agent-init) the agent is /sbin/init.
INIT_PROCESS=${INIT_PROCESS:-systemd}
if [ "${AGENT_INIT:-no}" = yes ]; then INIT_PROCESS=agent; fi

# The guest's packages (EXTRA_PKG adds more).
PACKAGES=${PACKAGES:-}

# The package repository; empty means the package manager's default.
REPO_URL=${REPO_URL:-}

# Architectures this distro can't be built for (uname -m names).
ARCH_EXCLUDE_LIST=""

# Host programs build_rootfs needs (alternatives separated by |).
HOST_TOOLS=""
