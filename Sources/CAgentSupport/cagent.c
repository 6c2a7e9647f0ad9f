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
