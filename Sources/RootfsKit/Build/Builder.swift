import Foundation

/// What the user asked `rootfs build` for.
public struct BuildOptions: Sendable {
    public var distro: String
    public var distrosDirs: [String] = []
    public var rootfsDir: String?
    public var initrd: String?
    public var image: String?
    public var osVersion: String?
    public var extraPackages: [String] = []
    public var agentPath: String?
    public var agentInit = false
    public var force = false
    public var freeSpaceMiB = 64
    public var compression: Compression = .zstd
    public var buildDirectory: String?
    /// Where the hook runs (nil: USE_DOCKER / USE_PODMAN, else the host).
    public var engine: EngineChoice?
    /// The builder image's FROM (--builder-base; nil: BUILDER_BASE, IMAGE_REGISTRY, Dockerfile.in).
    public var builderBase: String?
    public var environment: [String: String]

    public init(distro: String, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.distro = distro
        self.environment = environment
    }
}

/// Everything a build will do, decided before anything runs.
public struct BuildPlan: Sendable {
    public var distro: Distro
    public var config: DistroConfig
    public var architecture: String
    public var agent: AgentSpec
    public var extraPackages: [String]
    /// Where the finished tree goes, and whether it is kept after the images are written.
    public var rootfsDirectory: String
    public var keepRootfs: Bool
    public var force: Bool
    public var initrd: String?
    public var image: String?
    public var compression: Compression
    public var freeSpaceMiB: Int
    public var buildDirectory: String
    public var logPath: String
    /// The hook's environment (on top of the caller's).
    public var hookEnvironment: [String: String]
    public var epoch: Int?
    /// Runs the hook: on this host, or in a builder container.
    public var hookExecutor: HookExecutor = .host

    /// The hook invocation for a given tree directory and helper file.
    public func hookInvocation(rootfs: String, helperPath: String) -> HookInvocation {
        var env = hookEnvironment
        env["ROOTFS_DIR"] = rootfs
        return HookInvocation(helperPath: helperPath, configPath: distro.configPath, libraryPath: distro.libraryPath,
                              rootfsDirectory: rootfs, workingDirectory: distro.directory, environment: env)
    }

    /// A human-readable account of the plan (`--dry-run`).
    public var summary: [String] {
        var lines = ["distro: \(distro.name) (\(distro.directory), \(distro.searchDirectory.origin.rawValue))"]
        for key in config.values.keys.sorted() { lines.append("  \(key)=\(shellQuote(config.values[key]!))") }
        lines.append("architecture: \(architecture)")
        lines.append("extra packages: \(extraPackages.isEmpty ? "(none)" : extraPackages.joined(separator: " "))")
        lines.append("agent: \(agent.sourcePath) -> \(agent.guestPath)\(agent.isInit ? " (as /sbin/init)" : " (systemd unit)")")
        let hook = hookInvocation(rootfs: rootfsDirectory, helperPath: buildDirectory + "/hook-helpers.sh")
        lines.append("engine: \(hookExecutor.description)")
        if case .container(let build) = hookExecutor {
            if let run = try? build.runCommand(for: hook) {
                let head = [run.tool] + run.arguments.prefix(while: { $0 != "--entrypoint" })
                lines.append("container: " + head.map(shellQuote).joined(separator: " ") + " ... \(build.image.tag) bash ...")
            }
        }
        lines.append("hook: \(hook.hostCommand.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\(shellQuote($0.value))" }.joined(separator: " ")) bash ... build_rootfs \(shellQuote(rootfsDirectory))")
        lines.append("rootfs: \(rootfsDirectory)\(keepRootfs ? "" : " (temporary)")")
        if let initrd { lines.append("initrd: \(initrd) (\(compression.rawValue))") }
        if let image { lines.append("image: \(image) (raw, MBR, ext4, \(freeSpaceMiB) MiB free)") }
        lines.append("log: \(logPath)")
        return lines
    }
}

/// One written output.
public struct BuildOutput: Sendable, Equatable {
    public var kind: String
    public var path: String
    public var bytes: Int64
}

/// Runs builds: plan, hook, agent, checks, image writer.
public struct Builder: Sendable {
    public var console: Console
    public var runner = ProcessRunner()

    public init(console: Console) { self.console = console }

    public func plan(_ options: BuildOptions) async throws -> BuildPlan {
        let env = options.environment
        let catalog = DistroCatalog.standard(distrosDirs: options.distrosDirs, environment: env)
        let distro = try catalog.find(options.distro)

        var extra = words(env["EXTRA_PKGS"]) + words(env["EXTRA_PKG"]) + options.extraPackages.flatMap { words($0) }
        var seen = Set<String>()
        extra = extra.filter { seen.insert($0).inserted }
        try PackageName.validate(extra, option: "--extra-pkg/EXTRA_PKG")

        var agentInit = options.agentInit || ["yes", "true", "1"].contains((env["AGENT_INIT"] ?? "").lowercased())
        let arch = env["ARCH"].flatMap { $0.isEmpty ? nil : $0 } ?? hostArchitecture()
        var overrides = [String: String]()
        if let v = options.osVersion { overrides["OS_VERSION"] = v }
        overrides["AGENT_INIT"] = agentInit ? "yes" : "no"
        overrides["ARCH"] = arch
        overrides["EXTRA_PKGS"] = extra.joined(separator: " ")
        overrides["EXTRA_PKG"] = extra.joined(separator: " ")
        let config = try await ConfigEvaluator().evaluate(distro, environment: env.merging(overrides) { $1 })
        if config.initProcess == "agent" { agentInit = true }
        guard ["systemd", "agent"].contains(config.initProcess) else {
            throw RootfsError("\(distro.configPath): INIT_PROCESS must be systemd or agent, not '\(config.initProcess)'")
        }
        if config.archExcludeList.contains(arch) {
            throw RootfsError("distro '\(distro.name)' does not support \(arch) (ARCH_EXCLUDE_LIST in \(distro.configPath))",
                              hint: "build another distro for this architecture (see `rootfs list`)")
        }
        if let bad = config.packages.first(where: { !PackageName.isValid($0) }) {
            throw RootfsError("PACKAGES in \(distro.configPath) holds an invalid package name: \(bad)")
        }
        let agent = try AgentSpec.resolve(agentPath: options.agentPath, agentInit: agentInit, environment: env)

        let buildDir = FS.absolute(options.buildDirectory ?? "build/\(distro.name)")
        let rootfsOption = options.rootfsDir ?? env["ROOTFS_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        let anyOutput = rootfsOption != nil || options.initrd != nil || options.image != nil
        let rootfsDir = FS.absolute(rootfsOption ?? buildDir + "/rootfs")
        let initrd = anyOutput ? options.initrd.map(FS.absolute) : buildDir + "/\(distro.name).initrd"
        let image = anyOutput ? options.image.map(FS.absolute) : buildDir + "/\(distro.name).img"
        if let initrd, options.initrd != nil { try FS.requireParentDirectory(of: initrd, option: "--initrd") }
        if let image, options.image != nil { try FS.requireParentDirectory(of: image, option: "--image") }
        if rootfsOption != nil {
            try FS.requireParentDirectory(of: rootfsDir, option: "--rootfs-dir")
        }
        if !options.force && !FS.isMissingOrEmptyDirectory(rootfsDir) && (rootfsOption != nil || !anyOutput) {
            throw RootfsError("the rootfs directory \(rootfsDir) is not empty",
                              hint: "pass --force to replace it (it is replaced only once the new build succeeded), or choose another --rootfs-dir")
        }
        if FS.exists(rootfsDir) && !FS.isDirectory(rootfsDir) {
            throw RootfsError("\(rootfsDir) exists and is not a directory")
        }

        var hookEnv = overrides
        for (key, value) in config.values where hookEnv[key] == nil { hookEnv[key] = value }
        hookEnv["OS_VERSION"] = config.osVersion ?? ""
        hookEnv["PACKAGES"] = config.packages.joined(separator: " ")
        hookEnv["REPO_URL"] = config.repoURL ?? ""
        hookEnv["AGENT_INIT"] = agentInit ? "yes" : "no"
        hookEnv["INIT_PROCESS"] = agentInit ? "agent" : config.initProcess
        hookEnv["CONFIG_DIR"] = distro.directory
        if let debug = env["DEBUG"], !debug.isEmpty { hookEnv["DEBUG"] = debug }

        let executor = try await hookExecutor(options, distro: distro, config: config, architecture: arch)
        var plan = BuildPlan(distro: distro, config: config, architecture: arch, agent: agent, extraPackages: extra,
                         rootfsDirectory: rootfsDir, keepRootfs: !anyOutput || rootfsOption != nil, force: options.force,
                         initrd: initrd, image: image, compression: options.compression,
                         freeSpaceMiB: options.freeSpaceMiB, buildDirectory: buildDir,
                         logPath: buildDir + "/build.log", hookEnvironment: hookEnv, epoch: try sourceDateEpoch(env))
        plan.hookExecutor = executor
        return plan
    }

    /// Host or container: --engine / --docker / --podman, else USE_DOCKER / USE_PODMAN, else the host.
    /// A host that lacks the distro's HOST_TOOLS is refused with the flag that would work.
    func hookExecutor(_ options: BuildOptions, distro: Distro, config: DistroConfig,
                      architecture: String) async throws -> HookExecutor {
        let env = options.environment
        let choice = options.engine ?? EngineChoice.fromEnvironment(env) ?? .host
        let missing = config.missingHostTools(path: env["PATH"])
        let kind: ContainerEngine.Kind
        switch choice {
        case .docker: kind = .docker
        case .podman: kind = .podman
        case .host, .auto:
            if missing.isEmpty { return .host }
            let answering = await ContainerEngine.firstAnswering(environment: env, runner: runner)
            if choice == .auto, let answering {
                kind = answering.kind
                break
            }
            let what = "distro '\(distro.name)' needs \(missing.joined(separator: ", ")) on this host (HOST_TOOLS in \(distro.configPath))"
            if let answering {
                throw RootfsError(what + ", which lacks it",
                                  hint: "\(answering.kind.displayName) answers here: add \(answering.kind.flag) to build inside a builder container, "
                                      + "or install the tools on this host")
            }
            throw RootfsError(what + ", which lacks it, and no container engine answers",
                              hint: "install the tools on this host, or install Docker or Podman and add --docker or --podman")
        }
        let engine = ContainerEngine.forHost(kind, environment: env)
        return .container(try await ContainerBuild.make(engine: engine, distro: distro, config: config,
                                                        architecture: architecture, builderBase: options.builderBase,
                                                        environment: env, runner: runner))
    }

    /// Runs the plan. Outputs appear only when complete; on any failure (or
    /// cancellation) temporary trees and files are removed and earlier outputs stay.
    public func run(_ plan: BuildPlan) async throws -> [BuildOutput] {
        try FS.makeDirectories(plan.buildDirectory)
        try console.openLog(at: plan.logPath)
        defer { console.closeLog() }
        let work = try FS.makeSiblingTemporaryDirectory(for: plan.keepRootfs ? plan.rootfsDirectory
                                                         : plan.buildDirectory + "/rootfs")
        defer { FS.remove(work) }
        let tree = work + "/rootfs"
        try FS.makeDirectories(tree)
        let helper = work + "/hook-helpers.sh"
        try HookLibrary.text.write(toFile: helper, atomically: false, encoding: .utf8)

        var phaseStart = Date()
        func done() { console.info(String(format: "    done in %.1f s", Date().timeIntervalSince(phaseStart))); phaseStart = Date() }

        try await runHook(plan, tree: tree, helper: helper)
        done()

        console.phase("agent: \(plan.agent.guestPath)\(plan.agent.isInit ? " as /sbin/init" : " started by systemd")")
        let guest = GuestTree(root: tree)
        let installer = AgentInstaller(tree: guest)
        try installer.install(plan.agent)
        let record = BuildRecord(
            toolVersion: RootfsVersion.version, distro: plan.distro.name, osName: plan.config.osName ?? plan.distro.name,
            osVersion: plan.config.osVersion ?? "", architecture: plan.architecture, packages: plan.config.packages,
            extraPackages: plan.extraPackages, agentPath: plan.agent.guestPath,
            agentSHA256: try SHA256.hexDigest(ofFile: plan.agent.sourcePath), agentInit: plan.agent.isInit,
            buildTime: plan.epoch ?? Int(Date().timeIntervalSince1970))
        try installer.writeFile(BuildRecord.guestPath, contents: Array(record.yaml.utf8), mode: 0o644)
        try RootfsChecker(tree: guest).require(agentInit: plan.agent.isInit, agentNames: [plan.agent.guestName])
        done()

        var outputs: [BuildOutput] = []
        if let initrd = plan.initrd {
            try Task.checkCancellation()
            console.phase("initrd: \(initrd)")
            let stats = try InitrdWriter(compression: plan.compression, epoch: plan.epoch).write(tree: tree, to: initrd)
            outputs.append(BuildOutput(kind: "initrd", path: initrd, bytes: stats.outputBytes))
            console.info("    \(stats.entries) entries, \(formatBytes(stats.inputBytes)) in, \(formatBytes(stats.outputBytes)) out")
            done()
        }
        if let image = plan.image {
            try Task.checkCancellation()
            console.phase("image: \(image)")
            let (stats, uuid) = try await DiskImageWriter(freeSpaceMiB: plan.freeSpaceMiB, epoch: plan.epoch)
                .write(tree: tree, to: image)
            outputs.append(BuildOutput(kind: "image", path: image, bytes: stats.outputBytes))
            console.info("    ext4 \(uuid), \(formatBytes(stats.outputBytes))")
            done()
        }
        if plan.keepRootfs {
            try Task.checkCancellation()
            try FS.replaceDirectory(plan.rootfsDirectory, with: tree)
            outputs.insert(BuildOutput(kind: "rootfs", path: plan.rootfsDirectory, bytes: 0), at: 0)
        }
        return outputs
    }

    /// Runs build_rootfs into `tree` (empty) through the plan's executor.
    public func runHook(_ plan: BuildPlan, tree: String, helper: String) async throws {
        try await plan.hookExecutor.prepare(console: console, runner: runner, scratchDirectory: FS.parent(tree))
        console.phase("build_rootfs: \(plan.distro.name) \(plan.config.osVersion ?? "") (\(plan.distro.directory))"
                      + (plan.hookExecutor.isHost ? "" : " in \(plan.hookExecutor.description)"))
        let invocation = plan.hookInvocation(rootfs: tree, helperPath: helper)
        console.detail("running: \(invocation.hostCommand.environment.count) variables, bash build_rootfs \(tree)")
        do {
            try await plan.hookExecutor.run(invocation, runner: runner) { line in console.toolLine(line) }
        } catch let failure as ToolFailure {
            throw RootfsError("build_rootfs() of distro '\(plan.distro.name)' failed (\(failure.status))",
                              hint: "the full output is in \(plan.logPath)", details: failure.outputTail)
        }
        try Task.checkCancellation()
        if FS.isMissingOrEmptyDirectory(tree) {
            throw RootfsError("build_rootfs() of distro '\(plan.distro.name)' left the rootfs directory empty",
                              hint: "the hook must populate the directory it receives as $1 (\(plan.distro.libraryPath))")
        }
    }

    private func words(_ s: String?) -> [String] {
        (s ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "," }).map(String.init)
    }
}

/// Package names are passed to package managers as single arguments, never
/// through a shell; anything that could be read as an option or shell syntax is refused.
public enum PackageName {
    public static func isValid(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first != "-" else { return false }
        return name.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "._+-:=~/@".unicodeScalars.contains(c)
        }
    }

    public static func validate(_ names: [String], option: String) throws {
        if let bad = names.first(where: { !isValid($0) }) {
            throw RootfsError("invalid package name in \(option): '\(bad)'",
                              hint: "package names are letters, digits and . _ + - : = ~ / @, and do not start with '-'")
        }
    }
}
