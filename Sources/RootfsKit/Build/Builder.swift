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
    /// `--kata` (true); nil: the Kata guest profile is on whenever the agent is Kata's (KataProfile.swift).
    public var kata: Bool?
    /// `--rootfs-only` (or ROOTFS_ONLY=yes): the distro tree, no agent, no init, no checks.
    public var rootfsOnly = false
    public var force = false
    public var freeSpaceMiB = 64
    public var compression: Compression = .zstd
    public var buildDirectory: String?
    /// Plan only (`--dry-run`): what would stop a build (a missing agent or
    /// host tool, a refused hook setting) is collected in `BuildPlan.problems`
    /// instead of thrown, and nothing is written.
    public var dryRun = false
    /// `--format` (repeatable): when given, these outputs replace the default rootfs + initrd + raw image.
    public var formats: [OutputFormat] = []
    /// `-o DIR` for the formats (default: the build directory).
    public var outputDirectory: String?
    /// `--overlay` / `--file`, applied in order after the hook and the agent, before the writers.
    public var overlays: [OverlaySpec] = []
    /// Options of the format writers (partition table, file system, kernel, ...).
    public var imageOptions = ImageOptions()
    /// Write `<name>.manifest.json` next to the outputs (and `<name>.spdx.json` with `sbom`).
    public var manifest = true
    public var sbom = false
    /// Where the hook runs (nil: USE_DOCKER / USE_PODMAN, else the host).
    public var engine: EngineChoice?
    /// The builder image's FROM (--builder-base; nil: BUILDER_BASE, IMAGE_REGISTRY, Dockerfile.in).
    public var builderBase: String?
    /// How the tree travels from the hook to the writers (default: directory as root, tar otherwise).
    public var transport: TreeTransport = .current
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
    /// The Kata guest profile or the distro tree alone (KataProfile.swift).
    public var profile = GuestProfileChoice()
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
    /// Host programs of HOST_TOOLS that are missing (each "a or b").
    public var missingHostTools: [String] = []
    /// What plan_rootfs() printed: the commands build_rootfs will run (nil: the distro has no plan_rootfs()).
    public var hookPlan: [String]? = nil
    /// Warnings plan_rootfs() printed (for example gpgcheck off).
    public var hookWarnings: [String] = []
    /// Dry run only: what would stop the build.
    public var problems: [RootfsError] = []
    /// The `--format` outputs (other than the rootfs directory) and where each goes.
    public var formatOutputs: [FormatOutput] = []
    public var overlays: [OverlaySpec] = []
    public var imageOptions = ImageOptions()
    /// The manifest and SPDX SBOM written next to the outputs (nil: not written).
    public var manifestPath: String?
    public var sbomPath: String?
    /// Runs the hook: on this host, or in a builder container.
    public var hookExecutor: HookExecutor = .host
    /// Directory (root) or tar (rootless): see TreeTransport.
    public var transport: TreeTransport = .directory

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
        result.append(PlanSection("distro", [
            "\(distro.name): \(distro.directory) (found via \(distro.searchDirectory.origin.rawValue))",
            "config: \(distro.configPath)",
            "hook: \(distro.libraryPath)",
        ]))
        result.append(PlanSection("config (config.sh evaluated)",
                                  config.values.keys.sorted().map { "\($0)=\(shellQuote(config.values[$0]!))" }))
        var target = ["architecture: \(architecture)",
                      "packages: \(config.packages.isEmpty ? "(none)" : config.packages.joined(separator: " "))",
                      "extra packages: \(extraPackages.isEmpty ? "(none)" : extraPackages.joined(separator: " "))"]
        let tools = config.hostTools.map { $0.joined(separator: "|") }
        target.append("host tools: \(tools.isEmpty ? "(none declared)" : tools.joined(separator: " "))"
                      + (missingHostTools.isEmpty ? "" : " (missing: \(missingHostTools.joined(separator: ", ")))"))
        if hookExecutor.isHost { target += config.hostChanges.map { "changes this host: \($0) (add --docker or --podman to leave the host alone)" } }
        result.append(PlanSection("guest", target))

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
            if let run = try? build.runCommand(for: hook) { engineLines.append(run.displayString) }
        }
        result.append(PlanSection("engine: \(hookExecutor.description)", engineLines))
        if let hookPlan {
            result.append(PlanSection("build_rootfs will run (from plan_rootfs)", hookPlan + hookWarnings.map { "warning: " + $0 }))
        } else {
            result.append(PlanSection("build_rootfs will run", ["(\(distro.libraryPath) has no plan_rootfs(): the commands are known only when it runs)"]))
        }
        result.append(PlanSection("agent", [
            "\(agent.sourcePath) -> \(agent.guestPath)" + (agent.isReferenceAgent ? " (reference agent)" : ""),
            agent.isInit ? "init: /sbin/init -> \(agent.guestPath) (agent is init)"
                : "init: systemd starts \(agent.guestName).service (\(AgentInstaller.targetName) is the default target)",
            "build record: \(BuildRecord.guestPath)",
        ]))
        var outputs: [String] = []
        outputs.append("rootfs: \(rootfsDirectory)\(keepRootfs ? "" : " (temporary, removed after the images are written)")\(force ? " (replacing what is there)" : "")")
        if let initrd { outputs.append("initrd: \(initrd) (cpio, \(compression.rawValue))") }
        if let image { outputs.append("image: \(image) (raw, MBR, ext4, \(freeSpaceMiB) MiB free)") }
        for o in formatOutputs { outputs.append("\(o.format.rawValue): \(o.path)") }
        if let manifestPath { outputs.append("manifest: \(manifestPath) (packages, agent, options, output digests)") }
        if let sbomPath { outputs.append("sbom: \(sbomPath) (SPDX 2.3 JSON)") }
        outputs.append("log: \(logPath) (build-<pid>.log when another build holds it)")
        outputs.append("tree: " + (transport == .directory ? "a directory (root: owners kept on disk)"
            : "a tar (rootless: build_rootfs may write ROOTFS_TAR; owners kept in the tar; every writer reads the tar)"))
        if let epoch { outputs.append("SOURCE_DATE_EPOCH: \(epoch)") }
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

/// One `--format` output of a build.
public struct FormatOutput: Sendable, Equatable {
    public var format: OutputFormat
    public var path: String
}

/// One written output.
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

        var problems: [RootfsError] = []
        // In a dry run, what would stop the build is reported, not thrown.
        func problem(_ error: RootfsError) throws {
            if options.dryRun { problems.append(error) } else { throw error }
        }

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
        guard DistroConfig.initProcesses.contains(config.initProcess) else {
            throw RootfsError("\(distro.configPath): INIT_PROCESS must be systemd, agent or kata-agent, not '\(config.initProcess)'",
                              hint: "systemd starts the agent; agent (Kata's kata-agent) makes the agent /sbin/init")
        }
        if config.archExcludeList.contains(arch) {
            throw RootfsError("distro '\(distro.name)' cannot be built for \(arch): ARCH_EXCLUDE_LIST in \(distro.configPath) excludes it (ARCH_EXCLUDE_LIST=\"\(config.archExcludeList.joined(separator: " "))\")",
                              hint: "build another distro for \(arch) (see `rootfs list`), or set ARCH to an architecture the distro supports")
        }
        if let bad = config.packages.first(where: { !PackageName.isValid($0) }) {
            throw RootfsError("PACKAGES in \(distro.configPath) holds an invalid package name: \(bad)")
        }
        let profile = try GuestProfileChoice.decide(kata: options.kata, rootfsOnly: options.rootfsOnly, agentPath: options.agentPath,
                                                    agentInitFlag: options.agentInit, agentInit: agentInit, environment: env)
        do { try profile.kata?.validate() } catch let error as RootfsError { try problem(error) }
        var agent: AgentSpec
        do {
            agent = try profile.agent(agentPath: options.agentPath, agentInit: agentInit, environment: env)
        } catch let error as RootfsError {
            try problem(error)
            // Dry run: show where the agent would have come from.
            let path = options.agentPath ?? env["AGENT_SOURCE_BIN"] ?? ((FS.executableDirectory() ?? ".") + "/rootfs-agent")
            agent = AgentSpec(sourcePath: FS.absolute(path), guestName: env["AGENT_BIN"].flatMap { $0.isEmpty ? nil : $0 }
                              ?? (options.agentPath == nil && env["AGENT_SOURCE_BIN"] == nil ? "rootfs-agent" : "kata-agent"),
                              isInit: agentInit, isReferenceAgent: options.agentPath == nil)
        }
        // A build on this host needs HOST_TOOLS; a build in a container engine does not. The
        // executor (chosen below) refuses a host build without them, naming the flag that would work.
        let missingTools = config.missingHostTools(path: env["PATH"])

        let buildDir = FS.absolute(options.buildDirectory ?? "build/\(distro.name)")
        let rootfsOption = options.rootfsDir ?? env["ROOTFS_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        let anyOutput = rootfsOption != nil || options.initrd != nil || options.image != nil || !options.formats.isEmpty
        let formatDir = FS.absolute(options.outputDirectory ?? buildDir)
        let wantsRootfs = options.formats.contains(.rootfs)
        let rootfsDir = FS.absolute(rootfsOption ?? (wantsRootfs ? OutputFormat.rootfs.outputPath(directory: formatDir, name: distro.name) : buildDir + "/rootfs"))
        var formatOutputs: [FormatOutput] = []
        for f in options.formats where f != .rootfs && !formatOutputs.contains(where: { $0.format == f }) {
            formatOutputs.append(FormatOutput(format: f, path: f.outputPath(directory: formatDir, name: distro.name)))
        }
        if let d = options.outputDirectory, FS.exists(d) && !FS.isDirectory(d) {
            throw RootfsError("-o \(d) is not a directory", hint: "give the directory the formats are written to")
        }
        for case .overlay(let path) in options.overlays where !FS.exists(path) {
            throw RootfsError("--overlay \(path) does not exist", hint: "give a directory or a tar archive")
        }
        let initrd = anyOutput ? options.initrd.map(FS.absolute) : buildDir + "/\(distro.name).initrd"
        let image = anyOutput ? options.image.map(FS.absolute) : buildDir + "/\(distro.name).img"
        if let initrd, options.initrd != nil { try FS.requireParentDirectory(of: initrd, option: "--initrd") }
        if let image, options.image != nil { try FS.requireParentDirectory(of: image, option: "--image") }
        if rootfsOption != nil {
            try FS.requireParentDirectory(of: rootfsDir, option: "--rootfs-dir")
        }
        if !options.force && !FS.isMissingOrEmptyDirectory(rootfsDir) && (rootfsOption != nil || !anyOutput || wantsRootfs) {
            try problem(RootfsError("the rootfs directory \(rootfsDir) is not empty",
                              hint: "pass --force to replace it (it is replaced only once the new build succeeded), or choose another --rootfs-dir"))
        }
        if FS.exists(rootfsDir) && !FS.isDirectory(rootfsDir) {
            throw RootfsError("\(rootfsDir) exists and is not a directory")
        }
        var keepRootfs = !anyOutput || rootfsOption != nil || wantsRootfs
        if options.transport == .tar && keepRootfs {
            if rootfsOption != nil || wantsRootfs {
                try problem(RootfsError("a rootfs directory with its real owners (root:shadow, setuid root...) needs root: an ordinary user cannot chown files",
                                        hint: "as an ordinary user write --format tar (the tar keeps the owners), initrd or raw; or run as root for --rootfs-dir / --format rootfs"))
            } else {
                // Default outputs, rootless: the tree is kept as a tar instead of a directory.
                keepRootfs = false
                formatOutputs.insert(FormatOutput(format: .tar, path: buildDir + "/\(distro.name).tar"), at: 0)
            }
        }

        var hookEnv = overrides
        for (key, value) in config.values where hookEnv[key] == nil { hookEnv[key] = value }
        hookEnv["OS_VERSION"] = config.osVersion ?? ""
        hookEnv["PACKAGES"] = config.packages.joined(separator: " ")
        hookEnv["REPO_URL"] = config.repoURL ?? ""
        hookEnv["AGENT_INIT"] = agentInit ? "yes" : "no"
        hookEnv["INIT_PROCESS"] = agentInit ? "agent" : config.initProcess
        hookEnv["CONFIG_DIR"] = distro.directory
        hookEnv.merge(KataCallerEnvironment.variables(for: distro)) { mine, _ in mine }
        // Kata's names for the agent binary.
        hookEnv["AGENT_BIN"] = agent.guestName
        hookEnv["BIN_AGENT"] = agent.guestName
        if let debug = env["DEBUG"], !debug.isEmpty { hookEnv["DEBUG"] = debug }

        var plan = BuildPlan(distro: distro, config: config, architecture: arch, agent: agent, extraPackages: extra,
                             rootfsDirectory: rootfsDir, keepRootfs: keepRootfs, force: options.force,
                             initrd: initrd, image: image, compression: options.compression,
                             freeSpaceMiB: options.freeSpaceMiB, buildDirectory: buildDir,
                             logPath: buildDir + "/build.log", hookEnvironment: hookEnv, epoch: try sourceDateEpoch(env),
                             formatOutputs: formatOutputs, overlays: options.overlays, imageOptions: options.imageOptions)
        plan.missingHostTools = missingTools
        plan.profile = profile
        // Host or builder container; a host without the distro's tools is refused with the flag that would work.
        do {
            plan.hookExecutor = try await hookExecutor(options, distro: distro, config: config, architecture: arch)
        } catch let error as RootfsError {
            try problem(error)
        }
        if options.manifest || options.sbom {
            // Next to the first file output, named after it; else next to the rootfs directory.
            let base = (initrd ?? image).map { FS.parent($0) + "/" + Self.stem(FS.basename($0)) } ?? rootfsDir
            plan.manifestPath = base + ".manifest.json"
            if options.sbom { plan.sbomPath = base + ".spdx.json" }
        }
        plan.transport = options.transport
        // plan_rootfs() checks the hook's settings (a missing REPO_URL...) before anything is written.
        do {
            (plan.hookPlan, plan.hookWarnings) = try await hookPlan(plan)
        } catch let error as RootfsError {
            try problem(error)
        }
        plan.problems = problems
        return plan
    }

    /// Runs the distro's optional plan_rootfs(): the commands build_rootfs would
    /// run, printed without running them. Nil when the distro has none.
    func hookPlan(_ plan: BuildPlan) async throws -> ([String]?, [String]) {
        var env = plan.hookEnvironment
        env["ROOTFS_DIR"] = plan.hookTreePlaceholder
        let command = ToolCommand("bash", ["--noprofile", "--norc", "-c", HookLibrary.planScript, "rootfs-plan",
                                           plan.distro.configPath, plan.distro.libraryPath, plan.hookTreePlaceholder],
                                  environment: env, workingDirectory: plan.distro.directory)
        do {
            let output = try await runner.capture(command)
            let warnings = output.standardError.split(separator: "\n").map(String.init)
                .filter { $0.hasPrefix("WARNING: ") }.map { String($0.dropFirst("WARNING: ".count)) }
            return (output.standardOutput.split(separator: "\n").map(String.init), warnings)
        } catch let failure as ToolFailure {
            if failure.status == "exit status 3" { return (nil, []) }
            let errors = failure.outputTail.filter { $0.hasPrefix("ERROR: ") }.map { String($0.dropFirst("ERROR: ".count)) }
            throw RootfsError("distro '\(plan.distro.name)' refuses this build: \(errors.first ?? "plan_rootfs() failed (\(failure.status))")",
                              hint: "change the setting named above (environment or \(plan.distro.configPath)); plan_rootfs() is in \(plan.distro.libraryPath)",
                              details: errors.isEmpty ? failure.outputTail : Array(errors.dropFirst()))
        }
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
            let what = "distro '\(distro.name)' needs \(missing.joined(separator: ", ")) on this host (HOST_TOOLS in \(distro.configPath), or run by its hook)"
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
        if let first = plan.problems.first { throw first }
        try FS.makeDirectories(plan.buildDirectory)
        // One build per output at a time; a concurrent build of other outputs gets its own log.
        var outputPaths = (plan.keepRootfs ? [plan.rootfsDirectory] : []) + [plan.initrd, plan.image].compactMap { $0 }
        outputPaths += plan.formatOutputs.map(\.path)
        let locks = try outputPaths.sorted().map { try OutputLock(output: $0) }
        let logPath: String
        let logLock: OutputLock?
        if let lock = OutputLock.attempt(output: plan.logPath) {
            (logPath, logLock) = (plan.logPath, lock)
        } else {
            logPath = FS.parent(plan.logPath) + "/build-\(getpid()).log"
            logLock = nil
        }
        defer { withExtendedLifetime((locks, logLock)) {} }
        try console.openLog(at: logPath)
        defer { console.closeLog() }
        let work = try FS.makeSiblingTemporaryDirectory(for: plan.keepRootfs ? plan.rootfsDirectory
                                                         : plan.buildDirectory + "/rootfs")
        defer { FS.remove(work) }
        // mkdtemp makes it 0700: apt's _apt sandbox user could not reach the tree below it, and
        // a root build would then own apt's partial directories differently from a rootless one.
        chmod(work, 0o755)
        let tree = work + "/rootfs"
        try FS.makeDirectories(tree)
        let helper = work + "/hook-helpers.sh"
        try HookLibrary.text.write(toFile: helper, atomically: false, encoding: .utf8)

        func done() { console.endPhase() }

        var invocation = plan.hookInvocation(rootfs: tree, helperPath: helper)
        let hookTar = work + "/rootfs.tar"
        if plan.transport == .tar { invocation.environment["ROOTFS_TAR"] = hookTar }
        let watch = HookConfinement(work: work, allowed: ["rootfs", "hook-helpers.sh", "rootfs.tar"])
        try await runHook(plan, invocation: invocation, logPath: logPath)
        try watch.check(distro: plan.distro)
        var rootless: RootlessTree?
        if plan.transport == .tar {
            let staged = RootlessTree(root: tree)
            if FS.isRegularFile(hookTar) && FS.isMissingOrEmptyDirectory(tree) {
                console.detail("build_rootfs wrote a tar (\(formatBytes(FS.fileSize(hookTar)))): extracting it, owners kept aside")
                rmdir(tree)
                try staged.extract(hookTar)
                unlink(hookTar)
            }
            rootless = staged
        }
        if FS.isMissingOrEmptyDirectory(tree) {
            throw RootfsError("build_rootfs() of distro '\(plan.distro.name)' left the rootfs directory empty",
                              hint: "the hook must populate the directory it receives as $1 (\(plan.distro.libraryPath))")
        }
        done()

        let guest = GuestTree(root: tree)
        let installer = AgentInstaller(tree: guest)
        let agentSHA256 = try await plan.profile.install(plan.agent, tree: guest, console: console)
        var record = BuildRecord(
            toolVersion: RootfsVersion.version, distro: plan.distro.name, osName: plan.config.osName ?? plan.distro.name,
            osVersion: plan.config.osVersion ?? "", architecture: plan.architecture, packages: plan.config.packages,
            extraPackages: plan.extraPackages, agentPath: plan.agent.guestPath,
            agentSHA256: agentSHA256, agentInit: plan.agent.isInit,
            buildTime: plan.epoch ?? Int(Date().timeIntervalSince1970))
        plan.profile.complete(&record, agent: plan.agent, environment: plan.hookEnvironment)
        try installer.writeFile(BuildRecord.guestPath, contents: Array(record.yaml.utf8), mode: 0o644)
        if !plan.overlays.isEmpty {
            console.phase("compose: \(plan.overlays.map(\.description).joined(separator: ", "))")
            try OverlayApplier(tree: guest).apply(plan.overlays)
        }
        if !plan.profile.rootfsOnly {
            try RootfsChecker(tree: guest).require(agentInit: plan.agent.isInit, agentNames: [plan.agent.guestName])
        }
        // Rootless: the finished tree travels as a tar with the owners restored; every writer reads it.
        var source = TreeSource.directory(tree)
        if let rootless {
            let staged = work + "/tree.tar"
            try rootless.writeTar(to: staged, epoch: plan.epoch)
            source = .archive(staged)
        }
        done()

        var outputs: [BuildOutput] = []
        if let initrd = plan.initrd {
            try Task.checkCancellation()
            console.phase("initrd: \(initrd)")
            var writer = InitrdWriter(compression: plan.compression, epoch: plan.epoch)
            let started = Date()
            writer.progress = { [console] stats in console.progress(Self.rate(stats, since: started)) }
            let stats = try writer.write(source: source, to: initrd)
            console.progress(Self.rate(stats, since: started), final: true)
            outputs.append(BuildOutput(kind: "initrd", path: initrd, bytes: stats.outputBytes, sha256: try SHA256.hexDigest(ofFile: initrd)))
            done()
        }
        if let image = plan.image {
            try Task.checkCancellation()
            console.phase("image: \(image)")
            var disk = DiskImageWriter(freeSpaceMiB: plan.freeSpaceMiB, epoch: plan.epoch)
            disk.ext4Writer = plan.imageOptions.ext4Writer
            let (stats, uuid) = try await disk.write(source: source, to: image)
            outputs.append(BuildOutput(kind: "image", path: image, bytes: stats.outputBytes, sha256: try SHA256.hexDigest(ofFile: image)))
            console.info("    ext4 \(uuid), \(formatBytes(stats.outputBytes))")
            done()
        }
        if !plan.formatOutputs.isEmpty {
            var imageOptions = plan.imageOptions
            imageOptions.epoch = plan.epoch
            imageOptions.compression = plan.compression
            let writer = ImageWriter(options: imageOptions)
            for o in plan.formatOutputs {
                try Task.checkCancellation()
                console.phase("\(o.format.rawValue): \(o.path)")
                try FS.makeDirectories(FS.parent(o.path))
                outputs += try await writer.write(o.format, source: source, to: o.path)
                done()
            }
        }
        if plan.keepRootfs {
            outputs.insert(BuildOutput(kind: "rootfs", path: plan.rootfsDirectory, bytes: 0), at: 0)
        }
        if let manifestPath = plan.manifestPath {
            try Task.checkCancellation()
            console.phase("manifest: \(manifestPath)")
            let inventory = try await PackageInventory.read(tree: tree, runner: runner)
            if let note = inventory.note { console.warning("manifest: \(note)") }
            console.info("    \(inventory.packages.count) packages (\(inventory.database.rawValue))")
            let manifest = BuildManifest.make(plan: plan, inventory: inventory, agentSHA256: agentSHA256, outputs: outputs,
                                              buildTime: plan.epoch ?? Int(Date().timeIntervalSince1970))
            var documents = [("manifest", manifestPath, try manifest.json())]
            if let sbomPath = plan.sbomPath { documents.append(("sbom", sbomPath, try manifest.spdx())) }
            for (kind, path, data) in documents {
                let temporary = FS.siblingTemporaryPath(for: path)
                guard FileManager.default.createFile(atPath: temporary, contents: data) else {
                    throw RootfsError("cannot write \(path): \(FS.errnoText())")
                }
                do { try FS.rename(temporary, to: path) } catch { FS.remove(temporary); throw error }
                outputs.append(BuildOutput(kind: kind, path: path, bytes: Int64(data.count),
                                           sha256: SHA256.hexDigest(of: [UInt8](data))))
            }
            done()
        }
        if plan.keepRootfs {
            try Task.checkCancellation()
            try FS.replaceDirectory(plan.rootfsDirectory, with: tree)
        }
        return outputs
    }

    /// `1234 entries, 56.0 MiB in, 20.1 MiB out, 80.2 MiB/s`
    static func rate(_ stats: WriteStats, since start: Date) -> String {
        let seconds = max(Date().timeIntervalSince(start), 0.001)
        return "\(stats.entries) entries, \(formatBytes(stats.inputBytes)) in, \(formatBytes(stats.outputBytes)) out, "
            + "\(formatBytes(Int64(Double(stats.inputBytes) / seconds)))/s"
    }

    /// A file name without its last extension.
    static func stem(_ name: String) -> String {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return name }
        return String(name[..<dot])
    }

    /// Runs build_rootfs (its tree given by `invocation`) through the plan's executor.
    public func runHook(_ plan: BuildPlan, invocation: HookInvocation, logPath: String) async throws {
        try await plan.hookExecutor.prepare(console: console, runner: runner, scratchDirectory: FS.parent(invocation.rootfsDirectory))
        console.phase("build_rootfs: \(plan.distro.name) \(plan.config.osVersion ?? "") (\(plan.distro.directory))"
                      + (plan.hookExecutor.isHost ? "" : " in \(plan.hookExecutor.description)"))
        console.detail("running: \(invocation.hostCommand.environment.count) variables, bash build_rootfs \(invocation.rootfsDirectory)")
        do {
            try await plan.hookExecutor.run(invocation, runner: runner) { line in console.toolLine(line) }
        } catch let failure as ToolFailure {
            // A hook's own `die` message says best what went wrong: it leads the error.
            let died = failure.outputTail.last(where: { $0.hasPrefix("ERROR: ") }).map { ": " + $0.dropFirst("ERROR: ".count) } ?? ""
            throw RootfsError("build_rootfs() of distro '\(plan.distro.name)' failed (\(failure.status))\(died)",
                              hint: "the hook is build_rootfs() in \(plan.distro.libraryPath); the full output is in \(logPath)",
                              details: failure.outputTail)
        }
        try Task.checkCancellation()
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
