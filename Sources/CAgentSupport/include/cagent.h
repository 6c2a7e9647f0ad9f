#ifndef ROOTFS_CAGENT_H
#define ROOTFS_CAGENT_H
#ifdef ROOTFS_AGENT_EMBEDDED
// The agent for other architectures is Embedded Swift (scripts/build-agent.sh), which
// has no Glibc module: everything the agent calls in the C library comes in here.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
// Swift imports no variadic C function; Glibc's overlay wraps these three, so must we.
static inline int rootfs_agent_open(const char *path, int flags, mode_t mode) { return open(path, flags, mode); }
static inline int rootfs_agent_fcntl(int fd, int command) { return fcntl(fd, command); }
static inline int rootfs_agent_ioctl(int fd, unsigned long request, void *argument) { return ioctl(fd, request, argument); }
#endif
#include <stdint.h>
// The C library calls the agent needs that Swift's Glibc module lacks.
int rootfs_agent_power_off(void);
// Creates and activates device-mapper device NAME with one target (dmsetup create without
// libdevmapper). Returns 0 or -errno; *device gets the new device's number (huge_encode_dev).
// Loads the kernel module in file PATH (finit_module; no modprobe, no libkmod).
// Returns 0 (also when the module is already loaded) or -errno.
int rootfs_agent_load_module(const char *path);
// Gives interface NAME the IPv4 address ADDRESS/PREFIX and brings it up; a GATEWAY
// (NULL: none) becomes the default route. Dotted quads. Returns 0 or -errno.
int rootfs_agent_configure_ipv4(const char *name, const char *address, int prefix, const char *gateway);
int rootfs_dm_create(const char *name, int read_only, uint64_t start, uint64_t length,
                     const char *target, const char *params, uint64_t *device);
#endif
