import Foundation

/// What was built, written into the rootfs like Kata's osbuilder.yaml.
public struct BuildRecord: Sendable, Codable, Equatable {
    public static let guestPath = "/var/lib/osbuilder/osbuilder.yaml"

    public var tool: String = "rootfs"
    public var toolVersion: String
    public var distro: String
    public var osName: String
    public var osVersion: String
    public var architecture: String
    public var packages: [String]
    public var extraPackages: [String]
    public var agentPath: String
    public var agentSHA256: String
    public var agentInit: Bool
    /// Seconds since the epoch: SOURCE_DATE_EPOCH when set, else now.
    public var buildTime: Int
    /// Kata's keys (its create_summary_file): OSBUILDER_VERSION (default: rootfs's version), the agent's
    /// name, AGENT_VERSION ("unknown", as Kata writes without its VERSION file) and KATA_REPO.
    public var osbuilderVersion: String? = nil
    public var agentName: String = ""
    public var agentVersion: String = "unknown"
    public var agentRepository: String = ""

    public var yaml: String {
        func q(_ s: String) -> String {
            var out = "\""
            for c in s.unicodeScalars {
                switch c {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                default: out.unicodeScalars.append(c)
                }
            }
            return out + "\""
        }
        func list(_ items: [String]) -> String { "[" + items.map(q).joined(separator: ", ") + "]" }
        return """
        ---
        osbuilder:
          tool: \(q(tool))
          url: ""
          version: \(q(osbuilderVersion ?? toolVersion))
          tool-version: \(q(toolVersion))
        rootfs-creation-time: \(q(Self.iso8601(buildTime)))
        description: \(q("\(distro) \(osVersion) guest rootfs built by \(tool) \(toolVersion)"))
        file-format-version: "0.0.2"
        architecture: \(q(architecture))
        base-distro:
          name: \(q(osName))
          distro: \(q(distro))
          version: \(q(osVersion))
          packages:
            default: \(list(packages))
            extra: \(list(extraPackages))
        agent:
          path: \(q(agentPath))
          sha256: \(q(agentSHA256))
          init: \(agentInit)
          url: \(q(agentRepository.isEmpty ? "" : "https://" + agentRepository))
          name: \(q(agentName))
          version: \(q(agentVersion))
          agent-is-init-daemon: \(q(agentInit ? "yes" : "no"))

        """
    }

    static func iso8601(_ seconds: Int) -> String {
        var t = time_t(seconds)
        var tm = tm()
        gmtime_r(&t, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1,
                      Int(tm.tm_mday), Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec))
    }
}

public enum RootfsVersion {
    public static let version = "0.1.0"
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

    /// `rootfs 0.1.0 (commit abc123def456)`.
    public static func describe() async -> String {
        "rootfs \(version) (commit \(await commit()))"
    }
}
