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

        var build = BuildOptions(distro: options.distro,
                                 environment: env.merging(["PACKAGES": options.packages.joined(separator: " ")]) { $1 })
        build.distrosDirs = options.distrosDirs
        build.osVersion = options.osVersion
        build.engine = .host
        build.agentInit = true
        // Only the hook stage runs: a tar output keeps the plan from claiming (or refusing,
        // rootless) a rootfs directory; the hook's work directory is made beside build/<distro>/rootfs.
        build.formats = [.tar]
        build.outputDirectory = buildDir
        build.manifest = false
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
        // The same hook stage as `rootfs build`: confinement checked, and rootless, the hook's
        // tar unpacked with the owners kept aside and restored in the tar the engine imports.
        let hooked = try await HookStage(console: console, runner: runner).run(plan, logPath: buildDir + "/seed.log")
        defer { FS.remove(hooked.work) }

        try Task.checkCancellation()
        console.phase("tar: \(plan.distro.name) \(plan.config.osVersion ?? "") rootfs")
        let tarball = hooked.work + "/rootfs.tar"
        let tarBytes: Int64
        if let rootless = hooked.rootless {
            try rootless.writeTar(to: tarball, epoch: plan.epoch)
            tarBytes = FS.fileSize(tarball)
        } else {
            tarBytes = try TarWriter(epoch: plan.epoch).write(source: .directory(hooked.tree), to: tarball).outputBytes
        }
        FS.remove(hooked.tree)

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
        return Result(tag: tag, imageID: id, skipped: false, tarBytes: tarBytes)
    }
}
