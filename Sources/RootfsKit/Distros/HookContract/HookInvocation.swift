import Foundation

/// How a distro's build_rootfs() is run: the same argument list and
/// environment whether bash runs on the host or inside a builder container.
public struct HookInvocation: Sendable, Equatable {
    public var helperPath: String
    public var configPath: String
    public var libraryPath: String
    public var rootfsDirectory: String
    public var workingDirectory: String
    /// What the hook receives in its environment (OS_VERSION, PACKAGES, EXTRA_PKGS...).
    public var environment: [String: String]
    /// Nil: build_rootfs ROOTFS_DIR. Else extend_rootfs ROOTFS_DIR PACKAGES... (a cached base
    /// gets just these packages; they are validated package names, never options).
    public var extendPackages: [String]? = nil

    /// The bash argument list, with paths rewritten by `map` (for container mounts).
    public func bashArguments(mapping map: (String) -> String = { $0 }) -> [String] {
        ["--noprofile", "--norc", "-c", extendPackages == nil ? HookLibrary.runnerScript : HookLibrary.extendRunnerScript,
         "rootfs-hook", map(helperPath), map(configPath), map(libraryPath), map(rootfsDirectory)] + (extendPackages ?? [])
    }

    /// The command that runs the hook on this host.
    public var hostCommand: ToolCommand {
        ToolCommand("bash", bashArguments(), environment: environment, workingDirectory: workingDirectory)
    }
}
