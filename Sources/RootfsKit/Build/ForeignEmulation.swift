import Foundation

/// Running another architecture's binaries during a build (maintainer scripts in an
/// arm64 Debian tree, RPM scriptlets...): qemu-user through binfmt_misc. The plan says
/// what is already there and what will be set up; the set-up only adds (it mounts
/// binfmt_misc when it is not mounted and enables the one emulator), and nothing of the
/// host's is undone afterwards: the emulator stays registered for the next build.
public struct ForeignEmulation: Sendable, Equatable {
    public static let binfmtDirectory = "/proc/sys/fs/binfmt_misc"

    public var architecture: Architecture
    /// binfmt_misc is mounted (its `status` file exists).
    public var mounted: Bool
    /// /proc/sys/fs/binfmt_misc/qemu-ARCH exists and says `enabled`.
    public var enabled: Bool
    /// /proc/sys/fs/binfmt_misc/qemu-ARCH exists (perhaps disabled).
    public var registered: Bool
    /// What stops the set-up: a missing package or mount (nil: nothing).
    public var missing: RootfsError?

    public var entryName: String { "qemu-" + architecture.qemuUserName }

    /// What the build will do to this host (empty: the emulator is already on).
    public var actions: [String] {
        var result: [String] = []
        if !mounted { result.append("mount -t binfmt_misc binfmt_misc \(Self.binfmtDirectory)") }
        if !enabled { result.append("update-binfmts --enable \(entryName)") }
        return result
    }

    /// The plan's lines for the guest section.
    public var summary: String {
        let what = "\(architecture.rawValue) binaries run through qemu-user (\(Self.binfmtDirectory)/\(entryName))"
        return actions.isEmpty ? "emulation: \(what), already enabled"
            : "emulation: \(what); changes this host: \(actions.joined(separator: "; ")) (left in place afterwards)"
    }

    /// Nil when the host runs the target's binaries itself.
    /// `binfmtDirectory` and `formats` (binfmt-support's formats, which qemu-user-static
    /// installs) are parameters for the tests.
    public static func plan(for architecture: Architecture, environment: [String: String] = ProcessInfo.processInfo.environment,
                            binfmtDirectory: String = ForeignEmulation.binfmtDirectory, formats: String = "/usr/share/binfmts")
        -> ForeignEmulation? {
        guard architecture != Architecture.host else { return nil }
        let entry = binfmtDirectory + "/qemu-" + architecture.qemuUserName
        let mounted = FS.exists(binfmtDirectory + "/status")
        let registered = mounted && FS.exists(entry)
        let enabled = registered && (Self.isEnabled(entry))
        var result = ForeignEmulation(architecture: architecture, mounted: mounted, enabled: enabled, registered: registered)
        guard !enabled else { return result }
        let packages = "apt-get install qemu-user-static binfmt-support"
        if !FS.isDirectory(binfmtDirectory) {
            result.missing = RootfsError("building for \(architecture.rawValue) on this \(hostArchitecture()) host needs binfmt_misc, and \(binfmtDirectory) does not exist",
                                         hint: "the kernel lacks binfmt_misc (CONFIG_BINFMT_MISC): build on a host that has it, or on a \(architecture.rawValue) host")
        } else if !FS.exists("\(formats)/\(result.entryName)") {
            result.missing = RootfsError("building for \(architecture.rawValue) on this \(hostArchitecture()) host needs qemu-user, and package qemu-user-static is not installed (no \(formats)/\(result.entryName))",
                                         hint: packages)
        } else if ProcessRunner.which("update-binfmts", path: environment["PATH"]) == nil {
            result.missing = RootfsError("building for \(architecture.rawValue) needs update-binfmts to enable \(result.entryName), and package binfmt-support is not installed",
                                         hint: packages)
        } else if getuid() != 0 {
            result.missing = RootfsError("building for \(architecture.rawValue) needs binfmt_misc set up: \(result.actions.joined(separator: "; ")), which only root may do"
                                         + (mounted ? "" : " (binfmt_misc is not mounted on \(binfmtDirectory))"),
                                         hint: "run those as root once (they stay until reboot), then build again")
        }
        return result
    }

    /// The first line of a binfmt_misc entry is `enabled` or `disabled`.
    static func isEnabled(_ entry: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: entry) else { return false }
        return data.starts(with: Array("enabled".utf8))
    }

    /// Mounts binfmt_misc and enables the emulator, as planned; then checks that it took.
    public func setUp(runner: ProcessRunner, console: Console) async throws {
        if let missing { throw missing }
        guard !enabled else { return }
        if !mounted {
            console.phase("mounting binfmt_misc on \(Self.binfmtDirectory) (for qemu-user)")
            _ = try await runner.capture(ToolCommand("mount", ["-t", "binfmt_misc", "binfmt_misc", Self.binfmtDirectory]))
        }
        console.phase("enabling \(entryName) in binfmt_misc (update-binfmts; left enabled)")
        _ = try await runner.capture(ToolCommand("update-binfmts", ["--enable", entryName]))
        let entry = Self.binfmtDirectory + "/" + entryName
        guard Self.isEnabled(entry) else {
            throw RootfsError("update-binfmts --enable \(entryName) ran, but \(entry) is not enabled",
                              hint: "check `update-binfmts --display \(entryName)`; package qemu-user-static provides the emulator")
        }
    }
}
