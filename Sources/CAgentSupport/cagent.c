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

// Guest networking for `rootfs boot --net user`: module loading and one static IPv4
// configuration with the classic ioctls (what ifconfig and route do), no netlink needed.
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>

int rootfs_agent_load_module(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    long rc = syscall(SYS_finit_module, fd, "", 0);
    int saved = errno;
    close(fd);
    if (rc != 0 && saved != EEXIST) return -saved;
    return 0;
}

static int rootfs_ipv4(const char *text, struct sockaddr *out) {
    struct sockaddr_in *in = (struct sockaddr_in *)out;
    memset(in, 0, sizeof(*in));
    in->sin_family = AF_INET;
    return inet_pton(AF_INET, text, &in->sin_addr) == 1 ? 0 : -EINVAL;
}

int rootfs_agent_configure_ipv4(const char *name, const char *address, int prefix, const char *gateway) {
    if (prefix < 0 || prefix > 32 || strlen(name) >= IFNAMSIZ) return -EINVAL;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int rc = 0;
    struct ifreq request;
    memset(&request, 0, sizeof(request));
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    if ((rc = rootfs_ipv4(address, &request.ifr_addr)) != 0) goto out;
    if (ioctl(fd, SIOCSIFADDR, &request) != 0) { rc = -errno; goto out; }
    struct sockaddr_in *mask = (struct sockaddr_in *)&request.ifr_netmask;
    memset(mask, 0, sizeof(*mask));
    mask->sin_family = AF_INET;
    mask->sin_addr.s_addr = htonl(prefix == 0 ? 0 : 0xffffffffu << (32 - prefix));
    if (ioctl(fd, SIOCSIFNETMASK, &request) != 0) { rc = -errno; goto out; }
    if (ioctl(fd, SIOCGIFFLAGS, &request) != 0) { rc = -errno; goto out; }
    request.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &request) != 0) { rc = -errno; goto out; }
    if (gateway) {
        struct rtentry route;
        memset(&route, 0, sizeof(route));
        if ((rc = rootfs_ipv4(gateway, &route.rt_gateway)) != 0) goto out;
        rootfs_ipv4("0.0.0.0", &route.rt_dst);
        rootfs_ipv4("0.0.0.0", &route.rt_genmask);
        route.rt_flags = RTF_UP | RTF_GATEWAY;
        route.rt_dev = request.ifr_name;
        if (ioctl(fd, SIOCADDRT, &route) != 0 && errno != EEXIST) { rc = -errno; goto out; }
    }
out:
    close(fd);
    return rc;
}
