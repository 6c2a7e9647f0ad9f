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
        AGENT_SOURCE_BIN, AGENT_BIN, AGENT_INIT=yes, ROOTFS_ONLY=yes, Kata's AGENT_TARBALL, AGENT_POLICY(_FILE), \
        KERNEL_MODULES_DIR, GUEST_HOOKS_TARBALL, PAUSE_IMAGE_TARBALL, COCO_GUEST_COMPONENTS_TARBALL, CONFIDENTIAL_GUEST, DEBUG, SOURCE_DATE_EPOCH, ROOTFS_DISTROS_PATH. \
        Container builds (docs/CONTAINERS.md): USE_DOCKER=true, USE_PODMAN=true, BUILDER_BASE, \
        IMAGE_REGISTRY, PODMAN_RUNTIME, DOCKER_RUNTIME, http_proxy/https_proxy/no_proxy.

        EXAMPLES:
          rootfs build debian                  # build/debian/: rootfs, .initrd, .img
          rootfs build debian -o out/d.qcow2   # one output, qcow2 by its extension
          rootfs build debian --format tar.zst -o out/guest
          rootfs build debian --format raw --format oci -O out
          rootfs build debian --agent-init --initrd x.initrd
          rootfs build debian --dry-run        # the plan; nothing is written
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The distro to build (see `rootfs list`); with --from-image, the build's name (default: from the image's name).",
              completion: .custom(distroNameCompletions))
    var distro: String?
    @Option(name: .customLong("from-image"), help: ArgumentHelp(
        "Build from a container image instead of a distro hook: docker://NAME, podman://NAME, oci:DIR[:TAG] or docker-archive:FILE. The agent is /sbin/init unless INIT_PROCESS=systemd.",
        valueName: "IMAGE"))
    var fromImage: String?
    @Option(name: [.short, .customLong("rootfs-dir")], help: ArgumentHelp("Write the rootfs directory here.", valueName: "DIR"))
    var rootfsDir: String?
    @Option(help: ArgumentHelp("Write an initrd (cpio) here.", valueName: "FILE")) var initrd: String?
    @Option(help: ArgumentHelp("Write a disk image here, in the format its extension names: .img or none raw, .qcow2, .vhd, .vhdx, .vmdk (MBR and ext4 unless --partition-table/--fs say otherwise).", valueName: "FILE")) var image: String?
    @Option(name: .customLong("os-version"), help: "The distro release (overrides OS_VERSION).") var osVersion: String?
    @Option(name: .customLong("extra-pkg"), help: ArgumentHelp("Install this package too (repeatable).", valueName: "PKG"))
    var extraPackages: [String] = []
    @Option(help: ArgumentHelp("Install this agent binary (default: the reference rootfs-agent).", valueName: "PATH"))
    var agent: String?
    @Option(help: ArgumentHelp("Build for this architecture: x86_64, aarch64, s390x or ppc64le (ARCH; default: the host's). Another architecture's binaries run through qemu-user.", valueName: "ARCH"))
    var arch: String?
    @Flag(name: .customLong("agent-init"), help: "Make the agent /sbin/init (no systemd).") var agentInit = false
    @Flag(help: "Make a Kata guest (kata-containers.target, Kata's agent unit, tmp.mount, empty resolv.conf and machine-id, pruned units; docs/AGENT.md). On by default with --agent, AGENT_SOURCE_BIN, AGENT_TARBALL or AGENT_BIN=kata-agent.")
    var kata = false
    @Flag(name: .customLong("rootfs-only"), help: "Only the distro tree: no agent, no init, no checks (ROOTFS_ONLY=yes; Kata's extension images).")
    var rootfsOnly = false
    @Flag(help: "Replace an existing, non-empty rootfs directory that an earlier rootfs build wrote.") var force = false
    @Flag(name: .customLong("force-any-directory"), help: "With --force: replace any non-empty directory (not /, your home or a mount point) even if rootfs did not build it.")
    var forceAnyDirectory = false
    @Option(help: ArgumentHelp("Initrd compression.", valueName: Compression.valueNames)) var compression: Compression = .zstd
    @Option(help: ArgumentHelp("Where the hook runs (default: host; auto: the host when it has the distro's tools, else an engine that answers).", valueName: EngineChoice.valueNames))
    var engine: EngineChoice?
    @Flag(help: "Run the hook in a Docker builder container (same as --engine docker; USE_DOCKER=true).") var docker = false
    @Flag(help: "Run the hook in a Podman builder container (same as --engine podman; USE_PODMAN=true).") var podman = false
    @Option(name: .customLong("builder-base"), help: ArgumentHelp("The builder image's FROM image (BUILDER_BASE; default: Dockerfile.in's, IMAGE_REGISTRY-prefixed).", valueName: "IMAGE"))
    var builderBase: String?
    @Option(name: .customLong("cache-dir"), help: ArgumentHelp("The cache shared by builds: downloaded packages (ROOTFS_CACHE_DIR; default: $XDG_CACHE_HOME/rootfs, or /var/cache/rootfs as root). An unusable one is a warning.", valueName: "DIR"))
    var cacheDir: String?
    @Flag(name: .customLong("no-cache"), help: "Neither use nor fill the tree cache (the hook runs).") var noCache = false
    @Flag(help: "Run the hook and replace the tree cache's entry for this build.") var refresh = false
    @Option(help: ArgumentHelp("Write every installed package with its exact version to this lock file (docs/CACHE.md, \"Lock files\").", valueName: "FILE"),
            completion: .file())
    var lock: String?
    @Option(help: ArgumentHelp("Install exactly the package versions of this lock file (written by --lock); fails naming a package the repository no longer has.", valueName: "FILE"),
            completion: .file())
    var locked: String?
    @Option(name: .customLong("format"), help: ArgumentHelp(
        "Write this format (repeatable): \(OutputFormat.names). Replaces the default outputs.", valueName: "F"),
            completion: .list(OutputFormat.allValueStrings))
    var formats: [String] = []
    @Option(name: [.customShort("C"), .customLong("config")], help: ArgumentHelp(
        "Read the build's settings from this rootfs.toml (default: ./rootfs.toml when no distro is named); flags given here override it (docs/CLI.md, \"Config files\").",
        valueName: "FILE"), completion: .file(extensions: ["toml"]))
    var configFile: String?
    @Option(name: .customLong("from-manifest"), help: ArgumentHelp(
        "Replay the build a manifest records (its `config`: every option, resolved); flags given here override it.", valueName: "MANIFEST"),
            completion: .file(extensions: ["json"]))
    var fromManifest: String?
    /// Set on the second parse, once the config's arguments are in (BuildCommand+Config.swift).
    @Flag(name: .customLong("config-applied"), help: .hidden) var configApplied = false
    @Option(name: [.customShort("O"), .customLong("output-dir")], help: ArgumentHelp(
        "Write the outputs into DIR: DIR/<distro>.<ext> for each --format, else the default ones (DIR/rootfs, DIR/<distro>.initrd, DIR/<distro>.img; default: build/<distro>).",
        valueName: "DIR"))
    var outputDirectory: String?
    @Option(name: [.short, .customLong("output")], help: ArgumentHelp(
        "Write the one output to FILE: the --format given, else the format FILE's extension names (as `rootfs image -o`). For several formats, use -O DIR.",
        valueName: "FILE"))
    var output: String?
    @OptionGroup var imageFlags: ImageFlags
    @OptionGroup var compose: ComposeFlags
    @Flag(name: .customLong("dry-run"), help: "Print the plan (distro, config, hook command, agent, outputs) and write nothing.") var dryRun = false
    @Flag(help: "Also write an SPDX 2.3 SBOM (<name>.spdx.json) next to the outputs.") var sbom = false
    @Flag(name: .customLong("no-manifest"), help: "Do not write <name>.manifest.json next to the outputs.") var noManifest = false
    @Flag(help: "Print one JSON document on stdout (outputs, digests, phase times); progress stays on stderr.") var json = false

    func validate() throws {
        if locked != nil && !extraPackages.isEmpty {
            throw ValidationError("--locked installs exactly the lock file's packages: drop --extra-pkg, or write a new lock with it and --lock")
        }
        if locked != nil && fromImage != nil { throw ValidationError("--locked pins a distro hook's packages: --from-image runs no hook") }
        if configFile != nil && fromManifest != nil {
            throw ValidationError("-C and --from-manifest both give the settings: choose one")
        }
        if distro == nil && fromImage == nil && configFile == nil && fromManifest == nil && !FS.isRegularFile(ConfigFile.defaultName) {
            throw ValidationError("name a distro to build (see `rootfs list`), or give --from-image IMAGE")
        }
        if sbom && noManifest { throw ValidationError("--sbom is written from the manifest's data: drop --no-manifest") }
        let chosen = Set([engine, docker ? .docker : nil, podman ? .podman : nil].compactMap { $0 })
        if chosen.count > 1 {
            throw ValidationError("--engine, --docker and --podman disagree: choose one engine")
        }
    }

    /// `--json` output of a build.
    struct Report: Encodable {
        var distro: String
        var osVersion: String
        var architecture: String
        var outputs: [BuildOutput]
        var phases: [Console.PhaseTime]
        var slowestPhase: Console.PhaseTime?
        var seconds: Double
        var log: String
        /// The tree cache: hit, miss (and why), refresh, off.
        var treeCache: TreeCacheOutcome.State
    }

    /// The engine the flags name (nil: USE_DOCKER / USE_PODMAN, else the host).
    var engineChoice: EngineChoice? { docker ? .docker : podman ? .podman : engine }

    /// The flags as BuildOptions, as far as they map without running anything: the one
    /// mapping `build` and `summary` share, so the summary cannot drift from the build.
    func makeOptions(boot: RootfsConfig.Boot?) -> BuildOptions {
        var options = BuildOptions(distro: distro ?? fromImage.map(ImageBuild.name(for:)) ?? "")
        options.fromImageLabel = fromImage
        options.distrosDirs = global.distrosDirs
        options.rootfsDir = rootfsDir
        options.initrd = initrd
        options.image = image
        options.osVersion = osVersion
        options.extraPackages = extraPackages
        options.agentPath = agent
        options.agentInit = agentInit
        options.architecture = arch
        options.kata = kata ? true : nil
        options.rootfsOnly = rootfsOnly
        options.force = force || forceAnyDirectory
        options.forceAnyDirectory = forceAnyDirectory
        options.compression = compression
        options.freeSpaceMiB = imageFlags.freeSpace
        options.outputDirectory = outputDirectory
        options.output = output
        options.dryRun = dryRun
        options.engine = engineChoice
        options.builderBase = builderBase
        options.cacheDirectory = cacheDir
        options.noCache = noCache
        options.refresh = refresh
        options.lockPath = lock
        options.lockedPath = locked
        options.manifest = !noManifest
        options.sbom = sbom
        options.recordedConfig = flagsConfig(boot: boot)
        return options
    }

    func run() async throws {
        if let configured = try await withConfig() { return try await configured.run() }
        var options = makeOptions(boot: configBoot())
        let (formatTexts, compose, flags) = (formats, compose, imageFlags)
        let console = global.makeConsole(json: json)
        let (dryRun, json) = (dryRun, json)
        let base = options
        try await CommandRunner.run(json: json, console: console) {
            var opts = base
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            if let label = opts.fromImageLabel { opts.fromImage = try await exports.resolve(label, option: "--from-image") }
            opts.formats = try formatTexts.map(OutputFormat.parse)
            opts.overlays = try await compose.specs(exports: exports)
            opts.imageOptions = try flags.options(epoch: nil, compression: opts.compression)
            opts.daxHeader = flags.daxHeader
            let builder = Builder(console: console)
            let plan = try await builder.plan(opts)
            if dryRun {
                if json {
                    try printJSON(BuildPlanDocument(plan))
                } else {
                    plan.summary.forEach { console.result($0) }
                }
                if !plan.problems.isEmpty {
                    // A plan that a build would refuse is a failed dry run (every problem is listed).
                    console.warning("dry run: a build would stop on \(plan.problems.count) problem(s), listed \(json ? "in \"problems\"" : "above")")
                    throw ExitCode.failure
                }
                return
            }
            let started = Date()
            let outputs = try await builder.run(plan)
            let seconds = Date().timeIntervalSince(started)
            let slowest = console.phases.max { $0.seconds < $1.seconds }
            if json {
                try printJSON(Report(distro: plan.distro.name, osVersion: plan.config.osVersion ?? "",
                                     architecture: plan.architecture, outputs: outputs, phases: console.phases,
                                     slowestPhase: slowest, seconds: seconds, log: plan.logPath,
                                     treeCache: plan.treeCacheOutcome.value))
            }
            for output in outputs { console.result(output.resultLine) }
            let slowText = slowest.map { String(format: "; slowest: %@ %.1f s", String($0.name.prefix { $0 != ":" }), $0.seconds) } ?? ""
            console.info(String(format: "built %@ in %.1f s%@ (log: %@)", plan.distro.name, seconds, slowText, plan.logPath))
        }
    }
}
