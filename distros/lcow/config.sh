# LCOW utility VM (Linux containers on Windows): the user-mode layout of
# Microsoft's LCOW custom image (/init script, busybox tools, runc, iproute2,
# e2fsprogs and their libraries, /sbin/udhcpc_config.script), made from
# Debian packages that are extracted, not installed: no dpkg database, no
# systemd, no package manager in the guest. The agent (LCOW's GCS, or the
# reference rootfs-agent) is installed by --agent and becomes /sbin/init;
# the /init script mounts the basics and hands PID 1 to it.
#   rootfs build lcow --agent ./gcs --kernel vmlinuz
# writes LCOW's two forms of the utility VM (its document: kernel+initrd, or "VHD: a VHDx
# file"): build/lcow/lcow-kernel, lcow-initrd.img, lcow-cmdline and build/lcow/lcow.vhdx.
# --format replaces them (--format vhd for the fixed VHD).
OS_NAME=lcow

# The outputs a build writes when none is asked.
DEFAULT_FORMATS="kernel+initrd vhdx"
# The Debian release the packages come from.
OS_VERSION=${OS_VERSION:-trixie}

# No systemd: the agent is always /sbin/init.
INIT_PROCESS=agent

# Debian packages extracted into the tree with their dependencies (EXTRA_PKG adds more).
PACKAGES=${PACKAGES-base-files busybox-static runc iproute2 e2fsprogs}

# Empty: mmdebstrap's own default Debian mirror. A URL (for example a snapshot) pins it.
REPO_URL=${REPO_URL:-}

# busybox's applet links are made by running the tree's busybox on the build host.
ARCH_EXCLUDE_LIST=""

# What this host needs to run build_rootfs.
HOST_TOOLS="mmdebstrap"
