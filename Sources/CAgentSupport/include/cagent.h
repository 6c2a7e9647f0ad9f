#ifndef ROOTFS_CAGENT_H
#define ROOTFS_CAGENT_H
#include <stdint.h>
// The C library calls the agent needs that Swift's Glibc module lacks.
int rootfs_agent_power_off(void);
// Creates and activates device-mapper device NAME with one target (dmsetup create without
// libdevmapper). Returns 0 or -errno; *device gets the new device's number (huge_encode_dev).
int rootfs_dm_create(const char *name, int read_only, uint64_t start, uint64_t length,
                     const char *target, const char *params, uint64_t *device);
#endif
