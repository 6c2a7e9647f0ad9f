import ArgumentParser
import Foundation
import RootfsKit

struct BuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build a distro's rootfs and write its rootfs directory, initrd and disk image.",
        discussion: """
        With no output option, writes build/<distro>/rootfs, build/<distro>/<distro>.initrd and \
        build/<distro>/<distro>.img. Environment: ROOTFS_DIR, OS_VERSION, EXTRA_PKG/EXTRA_PKGS, \
        AGENT_SOURCE_BIN, AGENT_BIN, AGENT_INIT=yes, DEBUG, SOURCE_DATE_EPOCH, ROOTFS_DISTROS_PATH. \
        Container builds (docs/CONTAINERS.md): USE_DOCKER=true, USE_PODMAN=true, BUILDER_BASE, \
        IMAGE_REGISTRY, PODMAN_RUNTIME, DOCKER_RUNTIME, http_proxy/https_proxy/no_proxy.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The distro to build (see `rootfs list`).") var distro: String
    @Option(name: [.short, .customLong("rootfs-dir")], help: ArgumentHelp("Write the rootfs directory here.", valueName: "DIR"))
    var rootfsDir: String?
    @Option(help: ArgumentHelp("Write an initrd (cpio) here.", valueName: "FILE")) var initrd: String?
    @Option(help: ArgumentHelp("Write a raw disk image (MBR, ext4) here.", valueName: "FILE")) var image: String?
    @Option(name: .customLong("os-version"), help: "The distro release (overrides OS_VERSION).") var osVersion: String?
    @Option(name: .customLong("extra-pkg"), help: ArgumentHelp("Install this package too (repeatable).", valueName: "PKG"))
    var extraPackages: [String] = []
    @Option(help: ArgumentHelp("Install this agent binary (default: the reference rootfs-agent).", valueName: "PATH"))
    var agent: String?
    @Flag(name: .customLong("agent-init"), help: "Make the agent /sbin/init (no systemd).") var agentInit = false
    @Flag(help: "Replace an existing, non-empty rootfs directory.") var force = false
    @Option(help: "Initrd compression.") var compression: Compression = .zstd
    @Option(name: .customLong("free-space"), help: ArgumentHelp("Free space in the disk image.", valueName: "MB"))
    var freeSpace: Int = 64
    @Option(help: ArgumentHelp("Where the hook runs: host (default), docker, podman, or auto (the host when it has the distro's tools, else an engine that answers).", valueName: "ENGINE"))
    var engine: EngineChoice?
    @Flag(help: "Run the hook in a Docker builder container (same as --engine docker; USE_DOCKER=true).") var docker = false
    @Flag(help: "Run the hook in a Podman builder container (same as --engine podman; USE_PODMAN=true).") var podman = false
    @Option(name: .customLong("builder-base"), help: ArgumentHelp("The builder image's FROM image (BUILDER_BASE; default: Dockerfile.in's, IMAGE_REGISTRY-prefixed).", valueName: "IMAGE"))
    var builderBase: String?
    @Flag(name: .customLong("dry-run"), help: "Print the plan and run nothing.") var dryRun = false

    func validate() throws {
        guard freeSpace >= 0 else { throw ValidationError("--free-space must be 0 or more") }
        let chosen = Set([engine, docker ? .docker : nil, podman ? .podman : nil].compactMap { $0 })
        if chosen.count > 1 {
            throw ValidationError("--engine, --docker and --podman disagree: choose one engine")
        }
    }

    /// The engine the flags name (nil: USE_DOCKER / USE_PODMAN, else the host).
    var engineChoice: EngineChoice? { docker ? .docker : podman ? .podman : engine }

    func run() async throws {
        var options = BuildOptions(distro: distro)
        options.distrosDirs = global.distrosDirs
        options.rootfsDir = rootfsDir
        options.initrd = initrd
        options.image = image
        options.osVersion = osVersion
        options.extraPackages = extraPackages
        options.agentPath = agent
        options.agentInit = agentInit
        options.force = force
        options.compression = compression
        options.freeSpaceMiB = freeSpace
        options.engine = engineChoice
        options.builderBase = builderBase
        let console = global.makeConsole()
        let dryRun = dryRun
        let opts = options
        try await CommandRunner.run {
            let builder = Builder(console: console)
            let plan = try await builder.plan(opts)
            if dryRun {
                plan.summary.forEach { console.result($0) }
                return
            }
            let started = Date()
            let outputs = try await builder.run(plan)
            for output in outputs {
                let size = output.kind == "rootfs" ? "" : "  " + formatBytes(output.bytes)
                console.result("\(output.kind): \(output.path)\(size)")
            }
            console.info(String(format: "built %@ in %.1f s (log: %@)", plan.distro.name,
                                Date().timeIntervalSince(started), plan.logPath))
        }
    }
}
