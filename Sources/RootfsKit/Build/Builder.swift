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
    /// `--format` (repeatable): when given, these outputs replace the default rootfs + initrd + raw image.
    public var formats: [OutputFormat] = []
    /// `-o DIR` for the formats (default: the build directory).
    public var outputDirectory: String?
    /// `--overlay` / `--file`, applied in order after the hook and the agent, before the writers.
    public var overlays: [OverlaySpec] = []
    /// Options of the format writers (partition table, file system, kernel, ...).
    public var imageOptions = ImageOptions()
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
    /// The `--format` outputs (other than the rootfs directory) and where each goes.
    public var formatOutputs: [FormatOutput] = []
    public var overlays: [OverlaySpec] = []
    public var imageOptions = ImageOptions()

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
        lines.append("hook: \(hook.hostCommand.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\(shellQuote($0.value))" }.joined(separator: " ")) bash ... build_rootfs \(shellQuote(rootfsDirectory))")
        lines.append("rootfs: \(rootfsDirectory)\(keepRootfs ? "" : " (temporary)")")
        if let initrd { lines.append("initrd: \(initrd) (\(compression.rawValue))") }
        if let image { lines.append("image: \(image) (raw, MBR, ext4, \(freeSpaceMiB) MiB free)") }
        for o in formatOutputs { lines.append("\(o.format.rawValue): \(o.path)") }
        for o in overlays { lines.append("compose: \(o)") }
        lines.append("log: \(logPath)")
        return lines
    }
}

/// One `--format` output of a build.
public struct FormatOutput: Sendable, Equatable {
    public var format: OutputFormat
    public var path: String
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

        return BuildPlan(distro: distro, config: config, architecture: arch, agent: agent, extraPackages: extra,
                         rootfsDirectory: rootfsDir, keepRootfs: !anyOutput || rootfsOption != nil || wantsRootfs, force: options.force,
                         initrd: initrd, image: image, compression: options.compression,
                         freeSpaceMiB: options.freeSpaceMiB, buildDirectory: buildDir,
                         logPath: buildDir + "/build.log", hookEnvironment: hookEnv, epoch: try sourceDateEpoch(env),
                         formatOutputs: formatOutputs, overlays: options.overlays, imageOptions: options.imageOptions)
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

        console.phase("build_rootfs: \(plan.distro.name) \(plan.config.osVersion ?? "") (\(plan.distro.directory))")
        let invocation = plan.hookInvocation(rootfs: tree, helperPath: helper)
        console.detail("running: \(invocation.hostCommand.environment.count) variables, bash build_rootfs \(tree)")
        do {
            try await runner.stream(invocation.hostCommand) { line in console.toolLine(line) }
        } catch let failure as ToolFailure {
            throw RootfsError("build_rootfs() of distro '\(plan.distro.name)' failed (\(failure.status))",
                              hint: "the full output is in \(plan.logPath)", details: failure.outputTail)
        }
        try Task.checkCancellation()
        if FS.isMissingOrEmptyDirectory(tree) {
            throw RootfsError("build_rootfs() of distro '\(plan.distro.name)' left the rootfs directory empty",
                              hint: "the hook must populate the directory it receives as $1 (\(plan.distro.libraryPath))")
        }
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
        if !plan.overlays.isEmpty {
            console.phase("compose: \(plan.overlays.map(\.description).joined(separator: ", "))")
            try OverlayApplier(tree: guest).apply(plan.overlays)
        }
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
        if !plan.formatOutputs.isEmpty {
            var imageOptions = plan.imageOptions
            imageOptions.epoch = plan.epoch
            imageOptions.compression = plan.compression
            let writer = ImageWriter(options: imageOptions)
            for o in plan.formatOutputs {
                try Task.checkCancellation()
                console.phase("\(o.format.rawValue): \(o.path)")
                try FS.makeDirectories(FS.parent(o.path))
                outputs += try await writer.write(o.format, source: .directory(tree), to: o.path)
                done()
            }
        }
        if plan.keepRootfs {
            try Task.checkCancellation()
            try FS.replaceDirectory(plan.rootfsDirectory, with: tree)
            outputs.insert(BuildOutput(kind: "rootfs", path: plan.rootfsDirectory, bytes: 0), at: 0)
        }
        return outputs
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
