#ifndef ROOTFS_CAGENT_H
#define ROOTFS_CAGENT_H
// The one C library call the agent needs that Swift's Glibc module lacks.
int rootfs_agent_power_off(void);
#endif
