# build_rootfs ROOTFS_DIR
#
# Populate ROOTFS_DIR (an empty directory) with the guest OS. It runs in bash
# with `set -euo pipefail`, after config.sh, with these in the environment:
#   ROOTFS_DIR   the directory to fill (also $1)
#   OS_VERSION   the release to install
#   PACKAGES     the guest's packages; EXTRA_PKGS (= EXTRA_PKG) the user's extra ones
#   ARCH         the target architecture (uname -m)
#   AGENT_INIT   yes when the agent will be /sbin/init (no init system needed)
#   REPO_URL     the package repository ("" = default)
#   CONFIG_DIR   this directory
# Helpers: info, warn, die, OK, check_program, require_program, check_root,
# print_command. rootfs installs the agent and checks /sbin/init afterwards:
# you don't. The whole contract is in docs/HOOKS.md.
#
# Optional: plan_rootfs ROOTFS_DIR prints the commands build_rootfs would run
# (print_command CMD ARGS...) without running them, for `rootfs build --dry-run`.
build_rootfs() {
    local rootfs_dir=$1
    die "build_rootfs() in ${CONFIG_DIR}/rootfs_lib.sh is a stub: implement it to populate ${rootfs_dir}"
}
