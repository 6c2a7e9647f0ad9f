import Foundation

/// The agent to put into the guest and how it starts.
public struct AgentSpec: Sendable, Equatable {
    /// The binary on the host.
    public var sourcePath: String
    /// The file name under /usr/bin in the guest.
    public var guestName: String
    /// The agent is /sbin/init (no systemd).
    public var isInit: Bool
    /// This is the project's own reference agent (no --agent given).
    public var isReferenceAgent: Bool

    public var guestPath: String { "/usr/bin/" + guestName }

    /// Finds and vets the agent binary: `--agent`, else AGENT_SOURCE_BIN, else
    /// the rootfs-agent built next to this executable.
    /// For another architecture than the host's, the reference agent is rootfs-agent-ARCH
    /// next to rootfs (scripts/build-agent.sh builds it), and a given agent must be ELF for it.
    public static func resolve(agentPath: String?, agentInit: Bool, architecture: Architecture? = Architecture.host,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AgentSpec {
        let given = agentPath ?? environment["AGENT_SOURCE_BIN"].flatMap { $0.isEmpty ? nil : $0 }
        let option = agentPath != nil ? "--agent" : "AGENT_SOURCE_BIN"
        let path: String
        let reference: Bool
        if let given {
            path = FS.absolute(given)
            reference = false
            guard FS.exists(path) else {
                throw RootfsError("\(option) \(given): no such file", hint: "give the path of the agent binary to install")
            }
            guard FS.isRegularFile(path) else { throw RootfsError("\(option) \(given) is not a regular file") }
            guard access(path, X_OK) == 0 else {
                throw RootfsError("\(option) \(given) is not executable", hint: "chmod +x \(shellQuote(given))")
            }
            guard ELF.isELF(path) else {
                throw RootfsError("\(option) \(given) is not an ELF executable",
                                  hint: "the guest needs a compiled Linux binary, not a script")
            }
            if let architecture, let machine = ELF.machine(path), machine != architecture.elfMachine {
                throw RootfsError("\(option) \(given) is an ELF executable for \(ELF.machineName(machine)), but the build is for \(architecture.rawValue)",
                                  hint: "give an agent built for \(architecture.rawValue), or build for \(ELF.machineName(machine)) with --arch")
            }
        } else if let architecture, architecture != Architecture.host {
            // The host's SwiftPM build makes the host's agent only; other architectures come from
            // scripts/build-agent.sh (Embedded Swift, docs/AGENT.md), written next to rootfs.
            let name = "rootfs-agent-" + architecture.rawValue
            guard let found = ProjectData.agent(named: name) else {
                let how = [.aarch64, .x86_64].contains(architecture)
                    ? "build it with `scripts/build-agent.sh --arch \(architecture.rawValue)` (it writes \(name) next to rootfs), or pass --agent PATH"
                    : "no Swift toolchain here builds it for \(architecture.rawValue) (docs/AGENT.md): pass --agent PATH, an agent built for \(architecture.rawValue)"
                throw RootfsError("no agent given and the reference agent \(name) for \(architecture.rawValue) was not found next to rootfs (searched \(ProjectData.agentDirectories().joined(separator: ", ")))", hint: how)
            }
            path = found
            reference = true
            guard ELF.machine(path) == architecture.elfMachine, ELF.isStatic(path) else {
                throw RootfsError("\(path) is not a static \(architecture.rawValue) executable",
                                  hint: "rebuild it with `scripts/build-agent.sh --arch \(architecture.rawValue)`")
            }
        } else {
            guard let found = ProjectData.agent(named: "rootfs-agent") else {
                throw RootfsError("no agent given and the reference agent rootfs-agent was not found (searched \(ProjectData.agentDirectories().joined(separator: ", ")))",
                                  hint: "build it with `swift build --product rootfs-agent`, or pass --agent PATH")
            }
            path = found
            reference = true
            guard ELF.isStatic(path) else {
                throw RootfsError("\(path) is not a static executable", hint: "rebuild it with `swift build --product rootfs-agent`")
            }
        }
        let name = environment["AGENT_BIN"].flatMap { $0.isEmpty ? nil : $0 } ?? (reference ? "rootfs-agent" : "kata-agent")
        guard !name.contains("/"), name != ".", name != ".." else {
            throw RootfsError("AGENT_BIN must be a file name, not \(name)")
        }
        return AgentSpec(sourcePath: path, guestName: name, isInit: agentInit, isReferenceAgent: reference)
    }
}

/// Puts the agent and the init into a built tree, never touching the host
/// through links inside it.
public struct AgentInstaller: Sendable {
    public var tree: GuestTree
    public init(tree: GuestTree) { self.tree = tree }

    public static let targetName = "rootfs-guest.target"

    public func install(_ agent: AgentSpec) throws {
        try writeFile(agent.guestPath, contentsOf: agent.sourcePath, mode: 0o755)
        if agent.isInit {
            try symlink(guestPath: "/sbin/init", target: agent.guestPath)
        } else {
            let unit = """
            [Unit]
            Description=Guest agent (\(agent.guestName))
            Requires=basic.target
            After=basic.target

            [Service]
            Type=simple
            ExecStart=\(agent.guestPath)
            StandardOutput=tty
            StandardError=tty
            TTYPath=/dev/console
            LimitNOFILE=1048576

            [Install]
            WantedBy=\(Self.targetName)

            """
            let target = """
            [Unit]
            Description=Guest OS with its agent
            Requires=basic.target
            After=basic.target
            Wants=\(agent.guestName).service
            AllowIsolate=yes

            """
            try writeFile("/usr/lib/systemd/system/\(agent.guestName).service", contents: Array(unit.utf8), mode: 0o644)
            try writeFile("/usr/lib/systemd/system/\(Self.targetName)", contents: Array(target.utf8), mode: 0o644)
            try symlink(guestPath: "/etc/systemd/system/\(Self.targetName).wants/\(agent.guestName).service",
                        target: "/usr/lib/systemd/system/\(agent.guestName).service")
            try symlink(guestPath: "/etc/systemd/system/default.target", target: "/usr/lib/systemd/system/\(Self.targetName)")
        }
    }

    public func writeFile(_ guestPath: String, contentsOf hostSource: String, mode: mode_t) throws {
        guard let data = FileManager.default.contents(atPath: hostSource) else {
            throw RootfsError("cannot read \(hostSource)")
        }
        try writeFile(guestPath, contents: Array(data), mode: mode)
    }

    /// Writes a regular file in the guest, replacing what was there (a link is replaced, not followed).
    /// Made relative to its parent's open descriptor (GuestTree.parentForCreating): no host path.
    public func writeFile(_ guestPath: String, contents: [UInt8], mode: mode_t) throws {
        let (parent, name) = try tree.parentForCreating(bytes: Array(guestPath.utf8))
        try removeNonDirectory(parent, name, guestPath: guestPath)
        let fd = name.withCString { openat(parent.fd, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) }
        guard fd >= 0 else { throw RootfsError("cannot create \(guestPath) in the rootfs: \(FS.errnoText())") }
        let file = OwnedFileDescriptor(taking: fd, name: "\(guestPath) in the rootfs")
        try file.writeAll(contents)
        fchmod(file.raw, mode)
    }

    public func symlink(guestPath: String, target: String) throws {
        let (parent, name) = try tree.parentForCreating(bytes: Array(guestPath.utf8))
        try removeNonDirectory(parent, name, guestPath: guestPath)
        guard target.withCString({ t in name.withCString { symlinkat(t, parent.fd, $0) } }) == 0 else {
            throw RootfsError("cannot create the link \(guestPath) in the rootfs: \(FS.errnoText())")
        }
    }

    private func removeNonDirectory(_ parent: TreeDirectory, _ name: [UInt8], guestPath: String) throws {
        var st = stat()
        guard name.withCString({ fstatat(parent.fd, $0, &st, AT_SYMLINK_NOFOLLOW) }) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            throw RootfsError("\(guestPath) in the rootfs is a directory; refusing to replace it")
        }
        guard name.withCString({ unlinkat(parent.fd, $0, 0) }) == 0 else {
            throw RootfsError("cannot replace \(guestPath) in the rootfs: \(FS.errnoText())")
        }
    }
}
