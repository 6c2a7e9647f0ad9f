import Foundation

/// The checks every tree passes before an image is written from it: an init
/// and an agent that exist inside the guest (links resolved in the guest).
public struct RootfsChecker: Sendable {
    public var tree: GuestTree
    public init(tree: GuestTree) { self.tree = tree }

    /// Agent names looked for when the caller does not know which one was installed.
    public static func candidateAgentNames(environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        var names = ["kata-agent", "rootfs-agent"]
        if let bin = environment["AGENT_BIN"], !bin.isEmpty { names.insert(bin, at: 0) }
        return names
    }

    /// What is wrong with the tree; empty when it is fine.
    /// With `architecture`, the init and the agent must also be ELF executables for it
    /// (a script init is fine: its interpreter is the distro's).
    public func problems(agentInit: Bool, agentNames: [String] = candidateAgentNames(),
                         architecture: Architecture? = nil) -> [String] {
        var problems: [String] = []
        guard FS.isDirectory(tree.root) else { return ["\(tree.root) is not a directory"] }
        let initHost = executable("/sbin/init", what: "the init", problems: &problems)
        var agentHost: String?
        var agentProblems: [String] = []
        for name in agentNames {
            var p: [String] = []
            if let host = executable("/usr/bin/" + name, what: "the agent", problems: &p) { agentHost = host; break }
            agentProblems += p
        }
        if agentHost == nil {
            let tried = agentNames.map { "/usr/bin/" + $0 }.joined(separator: " or ")
            problems.append("the agent is missing: no executable \(tried) in the rootfs"
                            + (agentProblems.isEmpty ? "" : " (" + agentProblems.joined(separator: "; ") + ")"))
        }
        if agentInit, let initHost, let agentHost, FS.realpath(initHost) != FS.realpath(agentHost) {
            problems.append("--agent-init: /sbin/init is not the agent")
        }
        if let architecture {
            for (what, host) in [("/sbin/init", initHost), ("the agent", agentHost)] {
                guard let host, let machine = ELF.machine(host), machine != architecture.elfMachine else { continue }
                problems.append("\(what) is an ELF executable for \(ELF.machineName(machine)), but the rootfs is for \(architecture.rawValue)")
            }
        }
        return problems
    }

    /// Throws one error listing every problem.
    public func require(agentInit: Bool, agentNames: [String] = candidateAgentNames(), architecture: Architecture? = nil) throws {
        let found = problems(agentInit: agentInit, agentNames: agentNames, architecture: architecture)
        guard found.isEmpty else {
            throw RootfsError("\(tree.root) is not a bootable rootfs", hint: agentInit
                              ? "build it with `rootfs build DISTRO --agent-init`, or install the agent as /sbin/init"
                              : "build it with `rootfs build DISTRO`, which installs init and agent", details: found)
        }
    }

    private func executable(_ guestPath: String, what: String, problems: inout [String]) -> String? {
        switch tree.resolve(guestPath) {
        case .found(let host, let guest):
            var st = stat()
            guard lstat(host, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
                problems.append("\(what) \(guestPath) resolves to \(guest), which is not a regular file")
                return nil
            }
            guard st.st_mode & 0o111 != 0 else {
                problems.append("\(what) \(guestPath) is not executable")
                return nil
            }
            return host
        case .missing(let guest):
            if guest == guestPath {
                problems.append("\(what) \(guestPath) is missing")
            } else {
                problems.append("\(what) \(guestPath) points to \(guest), which does not exist inside the rootfs")
            }
            return nil
        case .loop:
            problems.append("\(what) \(guestPath) is a symbolic link loop")
            return nil
        }
    }
}

extension RootfsChecker {
    /// The checks of `rootfs check`, `image` and `initrd` on a directory: an init and an agent.
    public static func requireTree(at path: String, agentInit: Bool) throws {
        guard FS.isDirectory(path) else {
            throw RootfsError("\(path) is not a directory", hint: "give the rootfs directory that `rootfs build` wrote")
        }
        try RootfsChecker(tree: GuestTree(root: FS.absolute(path))).require(agentInit: agentInit)
    }

    /// The same for a writer's input: a directory is checked here; an archive is checked by
    /// its writer reading it; anything else is refused.
    public static func requireTreeSource(at path: String, agentInit: Bool) throws {
        if FS.isDirectory(path) { try requireTree(at: path, agentInit: agentInit) }
        else if try ImageReference.parse(path) != nil { return }
        else if !FS.isRegularFile(path) {
            throw RootfsError("\(path) is neither a rootfs directory nor a tar archive",
                              hint: "give the rootfs directory `rootfs build` wrote, or a tar of it")
        }
    }
}
