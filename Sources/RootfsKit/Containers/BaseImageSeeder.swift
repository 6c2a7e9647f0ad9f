import Foundation

/// `rootfs builder seed`: makes a distro's base image (e.g. debian:trixie) in the
/// local store of an engine from a rootfs this tool builds on the host, for hosts
/// that reach a package mirror but no container registry.
public struct BaseImageSeeder: Sendable {
    public struct Options: Sendable {
        public var distro: String
        public var distrosDirs: [String] = []
        public var engine: ContainerEngine.Kind
        public var osVersion: String?
        /// The image reference (default: OS_NAME:OS_VERSION, what Dockerfile.in's FROM names).
        public var tag: String?
        /// The packages on top of the minimal base (default: none, PACKAGES="").
        public var packages: [String] = []
        /// Do nothing when the image is already in the store.
        public var ifMissing = false
        public var buildDirectory: String?
        public var environment: [String: String]

        public init(distro: String, engine: ContainerEngine.Kind,
                    environment: [String: String] = ProcessInfo.processInfo.environment) {
            self.distro = distro
            self.engine = engine
            self.environment = environment
        }
    }

    public struct Result: Sendable {
        public var tag: String
        public var imageID: String
        /// True when the image was present and `ifMissing` was given.
        public var skipped: Bool
        public var tarBytes: Int64
    }

    public var console: Console
    public var runner = ProcessRunner()

    public init(console: Console) { self.console = console }

    public func seed(_ options: Options) async throws -> Result {
        let env = options.environment
        let engine = ContainerEngine.forHost(options.engine, environment: env)
        try await engine.requireAnswering(runner: runner, environment: env)
        try PackageName.validate(options.packages, option: "--package")

        let buildDir = FS.absolute(options.buildDirectory ?? "build/\(options.distro)")
        try FS.makeDirectories(buildDir)
        let work = try FS.makeSiblingTemporaryDirectory(for: buildDir + "/seed")
        defer { FS.remove(work) }

        var build = BuildOptions(distro: options.distro,
                                 environment: env.merging(["PACKAGES": options.packages.joined(separator: " ")]) { $1 })
        build.distrosDirs = options.distrosDirs
        build.osVersion = options.osVersion
        build.engine = .host
        build.agentInit = true
        build.rootfsDir = work + "/rootfs"
        build.buildDirectory = buildDir
        let builder = Builder(console: console)
        let plan = try await builder.plan(build)

        let tag = options.tag ?? "\(BuilderImage.tagSafe(plan.config.osName ?? plan.distro.name)):"
            + BuilderImage.tagSafe(plan.config.osVersion ?? "latest")
        if options.ifMissing, let id = await engine.imageID(tag, runner: runner) {
            return Result(tag: tag, imageID: id, skipped: true, tarBytes: 0)
        }

        try console.openLog(at: buildDir + "/seed.log")
        defer { console.closeLog() }
        let tree = work + "/rootfs"
        try FS.makeDirectories(tree)
        let helper = work + "/hook-helpers.sh"
        try HookLibrary.text.write(toFile: helper, atomically: false, encoding: .utf8)
        try await builder.runHook(plan, invocation: plan.hookInvocation(rootfs: tree, helperPath: helper), logPath: plan.logPath)
        if FS.isMissingOrEmptyDirectory(tree) {
            throw RootfsError("build_rootfs() of distro '\(plan.distro.name)' left the rootfs directory empty")
        }

        try Task.checkCancellation()
        console.phase("tar: \(plan.distro.name) \(plan.config.osVersion ?? "") rootfs")
        let tarball = work + "/rootfs.tar"
        let stats = try TarWriter(epoch: plan.epoch).write(source: .directory(tree), to: tarball)
        FS.remove(tree)

        try Task.checkCancellation()
        console.phase("\(engine.kind.rawValue) import: \(tag)")
        let out: ToolOutput
        do {
            out = try await runner.capture(engine.importCommand(tarball: tarball, tag: tag))
        } catch let failure as ToolFailure {
            throw RootfsError("\(engine.kind.rawValue) import of the \(plan.distro.name) rootfs as \(tag) failed (\(failure.status))",
                              hint: "check the engine with `\(engine.kind.rawValue) info`", details: failure.outputTail)
        }
        let id = await engine.imageID(tag, runner: runner)
            ?? out.standardOutput.split(separator: "\n").last.map(String.init) ?? ""
        return Result(tag: tag, imageID: id, skipped: false, tarBytes: stats.outputBytes)
    }
}
