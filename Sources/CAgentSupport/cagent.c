#include "cagent.h"
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

int rootfs_agent_power_off(void) {
    return reboot(RB_POWER_OFF);
}

// Runs before the Swift runtime's own initializers. As PID 1 nothing is
// mounted yet, and a statically linked Swift runtime reads /proc/self/exe
// while setting up crash backtraces: without /proc it stops the program with
// "Unable to obtain Swift runtime path". Mount /proc first, and turn the
// backtracer off (there is no swift-backtrace in a guest anyway).
__attribute__((constructor(101)))
static void rootfs_agent_early_init(void) {
    if (getpid() != 1) return;
    setenv("SWIFT_BACKTRACE", "enable=no", 1);
    // Early in boot getrandom() blocks until the kernel has entropy, which
    // costs a second or more under emulation; the agent needs no seeded hashing.
    setenv("SWIFT_DETERMINISTIC_HASHING", "1", 1);
    if (access("/proc/self/exe", F_OK) != 0) {
        mkdir("/proc", 0555);
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
}

// Device mapper, for `rootfs-agent dm-create` in a stage-1 initrd: the three ioctls
// dmsetup issues for `dmsetup create NAME --table "START LENGTH TARGET PARAMS"`
// (DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND to resume), with no libdevmapper.
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <string.h>
#include <sys/ioctl.h>

static void rootfs_dm_header(struct dm_ioctl *io, size_t size, const char *name, uint32_t flags) {
    memset(io, 0, size);
    io->version[0] = DM_VERSION_MAJOR;
    io->data_size = (uint32_t)size;
    io->data_start = sizeof(struct dm_ioctl);
    io->flags = flags;
    strncpy(io->name, name, DM_NAME_LEN - 1);
}

int rootfs_dm_create(const char *name, int read_only, uint64_t start, uint64_t length,
                     const char *target, const char *params, uint64_t *device) {
    if (strlen(name) >= DM_NAME_LEN || strlen(target) >= DM_MAX_TYPE_NAME) return -EINVAL;
    int fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct dm_ioctl io;
    rootfs_dm_header(&io, sizeof io, name, 0);
    if (ioctl(fd, DM_DEV_CREATE, &io) < 0) { int e = errno; close(fd); return -e; }

    size_t plen = strlen(params) + 1;
    size_t size = sizeof(struct dm_ioctl) + sizeof(struct dm_target_spec) + ((plen + 7) & ~(size_t)7);
    char *buffer = calloc(1, size);
    if (!buffer) { close(fd); return -ENOMEM; }
    struct dm_ioctl *table = (struct dm_ioctl *)buffer;
    rootfs_dm_header(table, size, name, read_only ? DM_READONLY_FLAG : 0);
    table->target_count = 1;
    struct dm_target_spec *spec = (struct dm_target_spec *)(buffer + sizeof(struct dm_ioctl));
    spec->sector_start = start;
    spec->length = length;
    strncpy(spec->target_type, target, DM_MAX_TYPE_NAME - 1);
    memcpy(buffer + sizeof(struct dm_ioctl) + sizeof(struct dm_target_spec), params, plen);
    int result = 0;
    if (ioctl(fd, DM_TABLE_LOAD, table) < 0) result = -errno;
    free(buffer);
    if (result == 0) {
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG: resume, which makes the loaded table live.
        rootfs_dm_header(&io, sizeof io, name, read_only ? DM_READONLY_FLAG : 0);
        if (ioctl(fd, DM_DEV_SUSPEND, &io) < 0) result = -errno;
        else if (device) *device = io.dev;
    }
    if (result != 0) {
        // Leave no half-made device behind.
        struct dm_ioctl removal;
        rootfs_dm_header(&removal, sizeof removal, name, 0);
        ioctl(fd, DM_DEV_REMOVE, &removal);
    }
    close(fd);
    return result;
}
