import Foundation

/// Everything a build will do, decided before anything runs.
public struct BuildPlan: Sendable {
    public var distro: Distro
    public var config: DistroConfig
    public var architecture: String
    public var agent: AgentSpec
    /// The Kata guest profile or the distro tree alone (KataProfile.swift).
    public var profile = GuestProfileChoice()
    public var extraPackages: [String]
    /// Where the finished tree goes when it is kept (a `rootfs` output), and where the hook's
    /// work directory is made beside.
    public var rootfsDirectory: String
    public var force: Bool
    public var compression: Compression
    public var buildDirectory: String
    public var logPath: String
    /// The hook's environment (on top of the caller's).
    public var hookEnvironment: [String: String]
    public var epoch: Int?
    /// Host programs of HOST_TOOLS that are missing (each "a or b").
    public var missingHostTools: [String] = []
    /// What plan_rootfs() printed: the commands build_rootfs will run (nil: the distro has no plan_rootfs()).
    public var hookPlan: [String]? = nil
    /// Warnings plan_rootfs() printed (for example gpgcheck off).
    public var hookWarnings: [String] = []
    /// Dry run only: what would stop the build.
    public var problems: [RootfsError] = []
    /// Every output and where it goes, in the order they are written and listed: the rootfs
    /// directory (when kept), `--initrd` (initrd), `--image` (raw), then the `--format` outputs.
    public var outputs: [FormatOutput] = []
    public var overlays: [OverlaySpec] = []
    /// The writers' options: every output gets all of them (partition table, file system, epoch...).
    public var imageOptions = ImageOptions()
    /// The manifest and SPDX SBOM written next to the outputs (nil: not written).
    public var manifestPath: String?
    /// The manifest's `config` (BuildOptions.recordedConfig resolved with this plan) and the tool's commit.
    public var recordedConfig: RootfsConfig?
    public var toolCommit: RootfsVersion.BuildCommit?
    public var sbomPath: String?
    /// qemu-user for another architecture's binaries (nil: the host runs them).
    public var emulation: ForeignEmulation?
    /// Runs the hook: on this host, or in a builder container.
    public var hookExecutor: HookExecutor = .host
    /// Directory (root) or tar (rootless): see TreeTransport.
    public var transport: TreeTransport = .directory
    /// The cache shared by builds, and the package cache the hook gets as ROOTFS_PACKAGE_CACHE
    /// (nil: not used, `cacheWarnings` says why).
    public var cache = CacheDirectory(root: "")
    public var packageCache: String?
    /// Why a cache is not used (printed as warnings; the build goes on without it).
    public var cacheWarnings: [String] = []
    /// The tree cache and this build's key inputs (nil: not used); the outcome starts as the
    /// plan's lookup and the hook stage updates it (a corrupt entry becomes a miss).
    public var treeCache: TreeCache?
    public var treeCacheInputs: TreeCacheInputs?
    public var treeCacheOutcome = TreeCacheOutcome(.init(result: "off", key: "", why: []))
    /// The cached tree this build starts from when the tree cache says "incremental" (extend_rootfs adds the rest).
    public var incrementalBase: IncrementalBase?
    /// `--lock FILE` (written after the outputs) and `--locked FILE` (its packages are the hook's PACKAGES).
    public var lockPath: String?
    public var locked: PackageLock?

    /// Whether the finished tree is kept as a directory (a `rootfs` output).
    public var keepRootfs: Bool { outputs.contains { $0.format == .rootfs } }

    /// The files written (all outputs but the rootfs directory).
    public var fileOutputs: [FormatOutput] { outputs.filter { $0.format != .rootfs } }

    /// The hook invocation for a given tree directory and helper file.
    public func hookInvocation(rootfs: String, helperPath: String) -> HookInvocation {
        var env = hookEnvironment
        env["ROOTFS_DIR"] = rootfs
        return HookInvocation(helperPath: helperPath, configPath: distro.configPath, libraryPath: distro.libraryPath,
                              rootfsDirectory: rootfs, workingDirectory: distro.directory, environment: env)
    }

    /// The directory build_rootfs receives, as a dry run shows it (the real one is a fresh temporary sibling).
    public var hookTreePlaceholder: String {
        FS.parent(rootfsDirectory) + "/." + FS.basename(rootfsDirectory) + ".tmp-XXXXXX/rootfs"
    }

    /// A human-readable account of the plan (`--dry-run`), section by section.
    /// Other parts of the build (container engines, formats) add or extend sections.
    public var sections: [PlanSection] {
        var result: [PlanSection] = []
        if distro.searchDirectory.origin == .image {
            result.append(PlanSection("image", ["\(distro.name): \(distro.searchDirectory.path) (--from-image: no distro hook runs)"]))
        } else {
            result.append(PlanSection("distro", [
                "\(distro.name): \(distro.directory) (found via \(distro.searchDirectory.origin.rawValue))",
                "config: \(distro.configPath)",
                "hook: \(distro.libraryPath)",
            ]))
        }
        result.append(PlanSection("config (config.sh evaluated)",
                                  config.values.keys.sorted().map { "\($0)=\(shellQuote(config.values[$0]!))" }))
        var target = ["architecture: \(architecture)",
                      "packages: \(config.packages.isEmpty ? "(none)" : config.packages.joined(separator: " "))",
                      "extra packages: \(extraPackages.isEmpty ? "(none)" : extraPackages.joined(separator: " "))"]
        let tools = config.hostTools.map { $0.joined(separator: "|") }
        target.append("host tools: \(tools.isEmpty ? "(none declared)" : tools.joined(separator: " "))"
                      + (missingHostTools.isEmpty ? "" : " (missing: \(missingHostTools.joined(separator: ", ")))"))
        if let emulation { target.append(emulation.summary) }
        if hookExecutor.isHost { target += config.hostChanges.map { "changes this host: \($0) (add --docker or --podman to leave the host alone)" } }
        result.append(PlanSection("guest", target))

        if case .image(_, let label) = hookExecutor {
            result.append(PlanSection("tree", ["the layers of \(label), applied in process (digests verified, whiteouts applied)"]))
            return result + laterSections
        }
        let tree = hookTreePlaceholder
        let hook = hookInvocation(rootfs: tree, helperPath: FS.parent(tree) + "/hook-helpers.sh")
        var invocation = ["working directory: \(hook.workingDirectory)", "environment (on top of the caller's):"]
        invocation += hook.environment.sorted { $0.key < $1.key }.map { "  \($0.key)=\(shellQuote($0.value))" }
        invocation.append("command: " + (["bash"] + hook.bashArguments().map { $0 == HookLibrary.runnerScript ? "\"$RUNNER\"" : shellQuote($0) })
            .joined(separator: " "))
        invocation.append("RUNNER (bash -c script):")
        invocation += HookLibrary.runnerScript.split(separator: "\n").map { "  " + $0 }
        invocation.append("hook-helpers.sh: written at build time (info, warn, die, OK, check_program, require_program...)")
        result.append(PlanSection("hook invocation (bash, as run on the host or in the container)", invocation))
        var engineLines: [String] = []
        if case .container(let build) = hookExecutor {
            let hook = hookInvocation(rootfs: hookTreePlaceholder, helperPath: buildDirectory + "/hook-helpers.sh")
            if let remote = build.remote {
                engineLines.append("remote engine (\(remote)): nothing bind-mounted; the distro directory and helpers are copied in "
                                   + "(\(build.engine.kind.rawValue) cp), the tree comes back as a tar stream with its owners")
            } else if let run = try? build.runCommand(for: hook) {
                engineLines.append("local engine: bind mounts (faster than copying)")
                engineLines.append(run.displayString)
            }
        }
        result.append(PlanSection("engine: \(hookExecutor.description)", engineLines))
        let cacheResult = treeCacheOutcome.value.result
        if cacheResult == "incremental", let base = incrementalBase {
            // What runs instead of build_rootfs: the cached base is restored and only the new packages are installed.
            result.append(PlanSection("extend_rootfs will run (tree cache: incremental; build_rootfs is not run)", [
                "the cached tree \(base.key.prefix(16)) is restored as \(tree), then:",
                "extend_rootfs \(shellQuote(tree)) " + base.adding.map(shellQuote).joined(separator: " "),
            ]))
        } else if cacheResult == "hit" {
            result.append(PlanSection("build_rootfs will not run (tree cache: hit)", ["the cached tree is restored as \(tree)"]))
        } else if let hookPlan {
            result.append(PlanSection("build_rootfs will run (from plan_rootfs)", hookPlan + hookWarnings.map { "warning: " + $0 }))
        } else {
            result.append(PlanSection("build_rootfs will run", ["(\(distro.libraryPath) has no plan_rootfs(): the commands are known only when it runs)"]))
        }
        return result + laterSections
    }

    /// The sections after the tree's: agent, outputs and what follows.
    private var laterSections: [PlanSection] {
        var result: [PlanSection] = []
        result.append(PlanSection("cache: \(cache.root)", [
            "packages: " + (packageCache.map { "\($0) (ROOTFS_PACKAGE_CACHE: the hook's downloads, kept out of the guest)" } ?? "not used"),
            treeCacheLine,
        ] + cacheWarnings.map { "warning: " + $0 }))
        result.append(PlanSection("agent", [
            "\(agent.sourcePath) -> \(agent.guestPath)" + (agent.isReferenceAgent ? " (reference agent)" : ""),
            agent.isInit ? "init: /sbin/init -> \(agent.guestPath) (agent is init)"
                : "init: systemd starts \(agent.guestName).service (\(AgentInstaller.targetName) is the default target)",
            "build record: \(BuildRecord.guestPath)",
        ]))
        var outputs: [String] = []
        if !keepRootfs { outputs.append("rootfs: \(rootfsDirectory) (temporary, removed after the images are written)") }
        for output in self.outputs { outputs.append(describe(output)) }
        if let manifestPath { outputs.append("manifest: \(manifestPath) (packages, agent, options, output digests)") }
        if let sbomPath { outputs.append("sbom: \(sbomPath) (SPDX 2.3 JSON)") }
        outputs.append("log: \(logPath) (build-<pid>.log when another build holds it)")
        outputs.append("tree: " + (transport == .directory ? "a directory (root: owners kept on disk)"
            : "a tar (rootless: build_rootfs may write ROOTFS_TAR; owners kept in the tar; every writer reads the tar)"))
        if let epoch { outputs.append("SOURCE_DATE_EPOCH: \(epoch)") }
        let booting = self.outputs.map(\.format).filter(Preflight.kernelFormats.contains)
        if !booting.isEmpty {
            outputs.append("kernel: " + (imageOptions.kernel.map { "\($0) (--kernel)" }
                ?? "the tree's /boot/vmlinuz* (no --kernel): what build_rootfs installs is known only when it has run, so it is checked then, before any output is written"))
        }
        if !overlays.isEmpty {
            result.append(PlanSection("compose (after the hook and the agent, in order)", overlays.map(\.description)))
        }
        result.append(PlanSection("outputs (each written under a temporary name, then renamed)", outputs))
        if !problems.isEmpty {
            result.append(PlanSection("problems (a build would stop here)", problems.flatMap { problem in
                ["\(problem.message)"] + problem.details.map { "  " + $0 } + (problem.hint.map { ["  hint: " + $0] } ?? [])
            }))
        }
        return result
    }

    /// The tree cache's decision as the plan and the build output show it.
    public var treeCacheLine: String {
        let o = treeCacheOutcome.value
        switch o.result {
        case "hit":
            // docs/CLI.md, "Caches": an unknown repository state is reused, and said so.
            let unknown = treeCacheInputs.map(\.repository).flatMap { $0.hasPrefix("unknown") ? $0 : nil }
            return "tree: hit \(o.key.prefix(16)) (build_rootfs is skipped"
                + (unknown.map { "; repository state \($0): a mirror update is not seen, --refresh rebuilds" } ?? "") + ")"
        case "miss": return "tree: miss \(o.key.prefix(16)) (\(o.why.joined(separator: "; "))): build_rootfs runs, the tree is stored"
        case "incremental":
            return "tree: incremental \(o.key.prefix(16)) from \(o.base.map { String($0.prefix(16)) } ?? "?") (\(o.why.joined(separator: "; "))): build_rootfs is skipped, extend_rootfs runs, the tree is stored"
        case "refresh": return "tree: refresh \(o.key.prefix(16)) (--refresh: build_rootfs runs, the entry is replaced)"
        default: return "tree: not used" + (o.why.isEmpty ? "" : " (\(o.why.joined(separator: "; ")))")
        }
    }

    /// One output as the dry run lists it: what it is, where, and the options its writer uses.
    func describe(_ output: FormatOutput) -> String {
        let o = imageOptions
        switch output.format {
        case .rootfs:
            return "rootfs: \(output.path)\(force ? " (replacing what is there)" : "")"
        case .initrd:
            return "\(output.kind): \(output.path) (cpio, \(o.compression.rawValue))"
        case .raw, .qcow2, .vhd, .vmdk:
            let table = o.partitionTable == .none ? "no partition table" : o.partitionTable.rawValue.uppercased()
            return "\(output.kind): \(output.path) (\(output.format.rawValue), \(table), \(o.filesystem.rawValue)"
                + (o.filesystem == .ext4 ? " by \((o.blockSize ?? 4096) == 4096 ? o.ext4Writer.rawValue : "mke2fs")" : "")
                + (o.filesystem == .erofs ? " \(o.erofsCompression.rawValue)" : "")
                + (o.blockSize.map { ", \($0)-byte blocks" } ?? "") + (o.dax ? ", DAX header" : "")
                + (o.alignmentMiB.map { ", size in \($0) MiB steps" } ?? "")
                + (o.verity ? ", dm-verity tree in partition 2, \(VerityDisk.rootHashFileName(variant: o.variant)) beside it" : "")
                + ", \(o.freeSpaceMiB) MiB free)"
        default:
            return "\(output.kind): \(output.path)"
        }
    }

    /// The sections as plain lines.
    public var summary: [String] {
        sections.flatMap { section in section.lines.isEmpty ? [section.title] : ["\(section.title):"] + section.lines.map { "  " + $0 } }
    }
}

/// One titled part of a `--dry-run` summary.
public struct PlanSection: Sendable, Equatable {
    public var title: String
    public var lines: [String]
    public init(_ title: String, _ lines: [String]) {
        self.title = title
        self.lines = lines
    }
}

