# Alpine guest OS: installed with apk --root ... --initdb add from an Alpine mirror.
# Every value can be overridden from the environment:
#   REPO_URL=http://<your Alpine mirror>/alpine rootfs build alpine
OS_NAME=alpine
OS_VERSION=${OS_VERSION:-3.23}

# Alpine has no systemd: the agent is always /sbin/init.
INIT_PROCESS=agent

# The guest's packages (EXTRA_PKG adds more).
PACKAGES=${PACKAGES-alpine-baselayout busybox musl chrony iptables}

# The mirror root (the directory holding v<version>/ and edge/, for example
# http://<mirror>/alpine). There is no built-in default: set REPO_URL (or MIRROR).
REPO_URL=${REPO_URL:-${MIRROR:-}}
# The branches' repositories used.
REPOSITORIES=${REPOSITORIES:-main community}
# The directory of trusted signing keys copied into the guest (apk checks the
# indexes and packages with them). On an Alpine host or builder image it is
# /etc/apk/keys; without one the build warns and uses --allow-untrusted.
APK_KEYS_DIR=${APK_KEYS_DIR:-/etc/apk/keys}

ARCH_EXCLUDE_LIST=""

# What this host needs to run build_rootfs (alternatives separated by |).
HOST_TOOLS="apk|apk.static"
