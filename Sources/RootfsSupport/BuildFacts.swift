import Foundation

// Facts every floor may need about this tool and this host: the version, SOURCE_DATE_EPOCH,
// the architecture and the time format of records and manifests. They live at the bottom
// so that the manifest (Inspect/) and the writers do not reach into the build for them.

public enum RootfsVersion {
    public static let version = "0.1.0"
}

extension RootfsVersion {
    /// The checkout this executable was built in: the nearest directory above
    /// it holding Package.swift and .git (nil for an installed copy).
    public static func checkout(executableDirectory: String? = FS.executableDirectory()) -> String? {
        guard var dir = executableDirectory else { return nil }
        while dir != "/" && !dir.isEmpty {
            if FS.isRegularFile(dir + "/Package.swift") && FS.exists(dir + "/.git") { return dir }
            dir = FS.parent(dir)
        }
        return nil
    }

    /// The commit of the checkout (`abc123def456`, `+dirty` when tracked files
    /// changed), or "unknown" outside a checkout or without git.
    public static func commit(checkout: String? = checkout(), runner: ProcessRunner = ProcessRunner()) async -> String {
        guard let checkout, ProcessRunner.which("git") != nil else { return "unknown" }
        guard let head = try? await runner.capture(ToolCommand("git", ["-C", checkout, "rev-parse", "--short=12", "HEAD"])) else {
            return "unknown"
        }
        let commit = head.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !commit.isEmpty else { return "unknown" }
        let status = try? await runner.capture(ToolCommand("git", ["-C", checkout, "status", "--porcelain", "--untracked-files=no"]))
        let dirty = !(status?.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ?? true)
        return commit + (dirty ? "+dirty" : "")
    }

    /// A commit and where it was read (a checkout, an install's record, or why it is unknown).
    public struct BuildCommit: Sendable, Equatable, Codable {
        public var commit: String
        public var source: String
        public init(commit: String, source: String) {
            self.commit = commit
            self.source = source
        }
    }

    /// `rootfs 0.1.0 (commit abc123def456)`.
    public static func describe() async -> String {
        "rootfs \(version) (commit \(await commit()))"
    }
}

/// Where the reference agents live: next to rootfs (a checkout's `swift build`), else the
/// install layout's PREFIX/libexec/rootfs (scripts/install.sh; docs/CLI.md, "Installing").
public enum InstallLayout {
    public static func agentDirectories(executableDirectory: String? = FS.executableDirectory()) -> [String] {
        guard let exe = executableDirectory else { return [] }
        return [exe, FS.parent(exe) + "/libexec/rootfs"]
    }

    /// The first `name` (rootfs-agent, rootfs-agent-aarch64...) found there.
    public static func agent(named name: String) -> String? {
        agentDirectories().map { $0 + "/" + name }.first(where: FS.isRegularFile)
    }
}

/// SOURCE_DATE_EPOCH, validated.
public func sourceDateEpoch(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Int? {
    guard let raw = environment["SOURCE_DATE_EPOCH"], !raw.isEmpty else { return nil }
    guard let value = Int(raw), value >= 0 else {
        throw RootfsError("SOURCE_DATE_EPOCH must be a whole number of seconds, not '\(raw)'")
    }
    return value
}

/// The host architecture as the kernel names it (x86_64, aarch64...).
public func hostArchitecture() -> String {
    var u = utsname()
    uname(&u)
    return withUnsafeBytes(of: &u.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
}

/// `2023-11-14T22:13:20Z`: the UTC time of records and manifests.
public func iso8601(_ seconds: Int) -> String {
    var t = time_t(seconds)
    var tm = tm()
    gmtime_r(&t, &tm)
    return String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1,
                  Int(tm.tm_mday), Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec))
}
