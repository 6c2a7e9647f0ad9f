import Foundation

/// Stops what a hook leaves running. A daemon the hook starts (gpg-agent, dirmngr,
/// a package's service) double-forks and calls setsid(), leaving the hook's session
/// and process group, so neither the group signal of the failure path nor the end of
/// the hook reaches it. Without cgroups: while `body` runs this process is a child
/// subreaper (prctl PR_SET_CHILD_SUBREAPER), so such orphans are re-parented to us
/// instead of init; afterwards, whatever success or failure, every child of ours that
/// was not there before gets SIGTERM, then SIGKILL after `grace`, and is reaped.
public enum OrphanReaper {
    private typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
    /// prctl(2) is variadic in C, so Swift does not import it: taken from libc by name
    /// (integer arguments pass the same way to a variadic function on x86-64 and arm64).
    private static let prctl: Prctl? = dlsym(nil, "prctl").map { unsafeBitCast($0, to: Prctl.self) }
    private static let setChildSubreaper: Int32 = 36  // PR_SET_CHILD_SUBREAPER, <linux/prctl.h>

    public static func stoppingOrphans<T>(grace: Duration = .seconds(2), _ body: () async throws -> T) async throws -> T {
        let before = children()
        let adopting = prctl?(setChildSubreaper, 1, 0, 0, 0) == 0
        defer {
            stop(excluding: before, grace: grace)
            if adopting { _ = prctl?(setChildSubreaper, 0, 0, 0, 0) }
        }
        return try await body()
    }

    /// The pids whose parent is this process (from /proc/PID/stat), zombies included.
    public static func children() -> Set<Int32> {
        let me = getpid()
        var found = Set<Int32>()
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return found }
        for name in names {
            guard let pid = Int32(name), let stat = FileManager.default.contents(atPath: "/proc/\(name)/stat") else { continue }
            // pid (comm) state ppid ...: comm may hold spaces and ')', so read after the last ')'.
            let bytes = [UInt8](stat)
            guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { continue }
            let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
            guard fields.count > 1, let ppid = Int32(String(decoding: fields[1], as: UTF8.self)), ppid == me else { continue }
            found.insert(pid)
        }
        return found
    }

    private static func stop(excluding before: Set<Int32>, grace: Duration) {
        let start = ContinuousClock.now
        var killed = false
        var signalled = Set<Int32>()
        while true {
            let strays = children().subtracting(before)
            // Reap the ones that ended; what is left is alive.
            var alive: [Int32] = []
            for pid in strays {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) != pid { alive.append(pid) }
            }
            if alive.isEmpty { return }
            let late = ContinuousClock.now - start > grace
            for pid in alive where late || !signalled.contains(pid) {
                // Its own group too: a daemon that called setsid() leads one with its helpers.
                kill(-pid, late ? SIGKILL : SIGTERM)
                kill(pid, late ? SIGKILL : SIGTERM)
                signalled.insert(pid)
            }
            if late {
                if killed && ContinuousClock.now - start > grace * 3 { return }
                killed = true
            }
            usleep(50_000)
        }
    }
}
