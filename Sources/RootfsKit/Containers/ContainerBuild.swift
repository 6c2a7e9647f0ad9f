import Foundation

/// Where the hook's files appear inside the builder container.
public enum ContainerPaths {
    public static let root = "/rootfs-build"
    /// The distro directory (config.sh, rootfs_lib.sh), read-only.
    public static let distro = root + "/distro"
    /// A second directory when rootfs_lib.sh lives apart from config.sh, read-only.
    public static let library = root + "/lib"
    /// Kata's script_dir (the directory holding the distro directories), read-only:
    /// Kata's debian sources `${script_dir}/ubuntu/config.sh`.
    public static let scriptDirectory = root + "/distros"
    /// The hook helpers file, read-only.
    public static let helpers = root + "/hook-helpers.sh"
    /// The tree the hook fills, read-write.
    public static let rootfs = root + "/rootfs"
}

/// A build whose hook runs in a builder container: the engine, the builder
/// image and what the container gets from the host's environment.
public struct ContainerBuild: Sendable, Equatable {
    public var engine: ContainerEngine
    public var image: BuilderImage
    /// http(s)_proxy / no_proxy, lower and upper case, when the caller has them.
    public var proxyEnvironment: [String: String]
    /// The container's name, so that an interrupted build can remove it.
    public var containerName: String

    public static let proxyVariables = ["http_proxy", "https_proxy", "no_proxy"]

    /// Variables that describe the host or its shell, never the build: the image sets its own.
    public static let hostOnlyVariables: Set<String> = [
        "PATH", "HOME", "PWD", "OLDPWD", "HOSTNAME", "SHLVL", "SHELL", "TERM", "USER", "LOGNAME", "TMPDIR",
        "EUID", "UID", "PPID", "GROUPS", "BASHOPTS", "SHELLOPTS", "IFS", "PS4", "OPTERR", "OPTIND", "DIRSTACK",
        "HISTCMD", "COMP_WORDBREAKS", "HOSTTYPE", "MACHTYPE", "OSTYPE", "_",
    ]

    public init(engine: ContainerEngine, image: BuilderImage, proxyEnvironment: [String: String],
                containerName: String) {
        self.engine = engine
        self.image = image
        self.proxyEnvironment = proxyEnvironment
        self.containerName = containerName
    }

    /// Both spellings of each proxy variable the caller set (either spelling).
    public static func proxies(from env: [String: String]) -> [String: String] {
        var out: [String: String] = [:]
        for name in proxyVariables {
            guard let value = nonEmpty(env[name]) ?? nonEmpty(env[name.uppercased()]) else { continue }
            out[name] = nonEmpty(env[name]) ?? value
            out[name.uppercased()] = nonEmpty(env[name.uppercased()]) ?? value
        }
        return out
    }

    /// A container name unique to this process and build.
    public static func uniqueName(distro: String) -> String {
        "rootfs-build-\(BuilderImage.tagSafe(distro))-\(getpid())-\(String(UInt32.random(in: 0 ... .max), radix: 16))"
    }

    /// The hook's mounts: distro directory (and library directory) and helpers
    /// read-only, the tree read-write.
    public func mounts(for invocation: HookInvocation) -> [ContainerMount] {
        let configDir = FS.parent(invocation.configPath)
        let libraryDir = FS.parent(invocation.libraryPath)
        var mounts = [ContainerMount(source: configDir, target: ContainerPaths.distro, readOnly: true)]
        if libraryDir != configDir {
            mounts.append(ContainerMount(source: libraryDir, target: ContainerPaths.library, readOnly: true))
        }
        if let scriptDir = invocation.environment["script_dir"], scriptDir != "/", scriptDir.hasPrefix("/") {
            mounts.append(ContainerMount(source: scriptDir, target: ContainerPaths.scriptDirectory, readOnly: true))
        }
        mounts.append(ContainerMount(source: invocation.helperPath, target: ContainerPaths.helpers, readOnly: true))
        mounts.append(ContainerMount(source: invocation.rootfsDirectory, target: ContainerPaths.rootfs, readOnly: false))
        return mounts
    }

    /// Maps a host path to its place in the container (longest mounted prefix), or nil.
    public static func map(_ path: String, mounts: [ContainerMount]) -> String? {
        var best: (source: String, target: String)?
        for m in mounts where path == m.source || path.hasPrefix(m.source.hasSuffix("/") ? m.source : m.source + "/") {
            if best == nil || m.source.count > best!.source.count { best = (m.source, m.target) }
        }
        guard let best else { return nil }
        return best.target + path.dropFirst(best.source.count)
    }

    /// The `run` command for the hook: the host's bash argument list and
    /// environment, paths mapped to the mounts.
    public func runCommand(for invocation: HookInvocation) throws -> ToolCommand {
        let mounts = mounts(for: invocation)
        for m in mounts where m.source.contains(",") || m.source.contains("\n") {
            throw RootfsError("cannot mount \(m.source) into the builder container: its path holds a comma or a newline",
                              hint: "build from a directory whose path has neither (--build-dir, --rootfs-dir, --distros-dir)")
        }
        let map = { (path: String) in ContainerBuild.map(path, mounts: mounts) ?? path }
        var env: [String: String] = [:]
        for (key, value) in invocation.environment where !ContainerBuild.hostOnlyVariables.contains(key) {
            env[key] = value.hasPrefix("/") ? ContainerBuild.map(value, mounts: mounts) ?? value : value
        }
        env.merge(proxyEnvironment) { $1 }
        let workdir = ContainerBuild.map(invocation.workingDirectory, mounts: mounts) ?? ContainerPaths.distro
        return engine.runCommand(name: containerName, image: image.tag, entrypoint: "bash",
                                 arguments: invocation.bashArguments(mapping: map), mounts: mounts,
                                 environment: env, workingDirectory: workdir)
    }

    /// Decides the container side of a plan: checks the engine answers and renders
    /// the builder image (built later, by `HookExecutor.prepare`).
    public static func make(engine: ContainerEngine, distro: Distro, config: DistroConfig, architecture: String,
                            builderBase: String?, environment env: [String: String],
                            runner: ProcessRunner = ProcessRunner()) async throws -> ContainerBuild {
        try await engine.requireAnswering(runner: runner, environment: env)
        let image = try await BuilderImage.make(
            distro: distro, osName: config.osName ?? distro.name, osVersion: config.osVersion ?? "latest",
            architecture: architecture, configValues: config.values,
            builderBase: builderBase ?? nonEmpty(env["BUILDER_BASE"]), registry: nonEmpty(env["IMAGE_REGISTRY"]),
            environment: env,
            baseImageID: { await engine.imageID($0, runner: runner) })
        return ContainerBuild(engine: engine, image: image, proxyEnvironment: proxies(from: env),
                              containerName: uniqueName(distro: distro.name))
    }
}

/// Runs a hook invocation: bash on this host, or the same bash in a builder container.
public enum HookExecutor: Sendable {
    case host
    case container(ContainerBuild)

    /// Makes what the hook needs before it runs (the builder image, when missing).
    public func prepare(console: Console, runner: ProcessRunner, scratchDirectory: String) async throws {
        guard case .container(let build) = self else { return }
        let engine = build.engine, image = build.image
        if let id = await engine.imageID(image.tag, runner: runner) {
            console.info("builder image: \(image.tag) (\(engine.kind.rawValue), \(id.prefix(19)), up to date)")
            return
        }
        console.phase("builder image: \(image.tag) (\(engine.kind.rawValue), from \(image.templatePath))")
        let dockerfile = FS.siblingTemporaryPath(for: scratchDirectory + "/Dockerfile")
        try image.dockerfile.write(toFile: dockerfile, atomically: false, encoding: .utf8)
        defer { FS.remove(dockerfile) }
        let steps = StepTracker()
        let command = engine.buildCommand(tag: image.tag, dockerfile: dockerfile, context: image.context,
                                          labels: [BuilderImage.inputsLabel: image.inputsHash],
                                          buildArguments: build.proxyEnvironment.merging(image.buildArguments) { $1 })
        do {
            try await runner.stream(command) { line in
                steps.note(line)
                console.toolLine(line)
            }
        } catch let failure as ToolFailure {
            try Task.checkCancellation()
            var hint = "fix \(image.templatePath) (rendered: FROM \(image.baseImage ?? "?")); the full output is in the build log"
            if let base = image.baseImage, await engine.imageID(base, runner: runner) == nil {
                hint = "the base image \(base) is not in the local \(engine.kind.displayName) store and could not be pulled: "
                    + "make it with `rootfs builder seed <distro> --engine \(engine.kind.rawValue)`, "
                    + "or name a reachable one with --builder-base IMAGE (BUILDER_BASE, IMAGE_REGISTRY)"
            }
            throw RootfsError("building the builder image \(image.tag) with \(engine.kind.rawValue) failed at "
                              + (steps.step ?? "an unknown step") + " (\(failure.status))",
                              hint: hint, details: failure.outputTail)
        }
    }

    /// Runs the hook. A hook that fails throws `ToolFailure` (the same report as
    /// on the host); an engine that cannot start the container throws `RootfsError`.
    /// On cancellation the container is removed before this returns.
    public func run(_ invocation: HookInvocation, runner: ProcessRunner,
                    onLine: @escaping @Sendable (String) -> Void) async throws {
        switch self {
        case .host:
            try await runner.stream(invocation.hostCommand, onLine: onLine)
        case .container(let build):
            let command = try build.runCommand(for: invocation)
            onLine("container: \(build.containerName) (\(build.engine.kind.rawValue) rm --force \(build.containerName) stops it)")
            let remove = build.engine.removeContainerCommand(build.containerName)
            do {
                try await withTaskCancellationHandler {
                    try await runner.stream(command, onLine: onLine)
                } onCancel: {
                    Task.detached { _ = try? await ProcessRunner().capture(remove) }
                }
            } catch {
                // Gone before the caller removes the tree it was writing to.
                await build.engine.removeContainer(build.containerName)
                if let failure = error as? ToolFailure, failure.status == "exit status 125" {
                    throw RootfsError("\(build.engine.kind.rawValue) could not start the builder container from \(build.image.tag)",
                                      hint: "see the engine's message above; `\(build.engine.kind.rawValue) info` shows its state",
                                      details: failure.outputTail)
                }
                throw error
            }
        }
    }

    public var isHost: Bool {
        if case .host = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .host: return "host"
        case .container(let b): return "\(b.engine.kind.rawValue) (builder image \(b.image.tag))"
        }
    }
}

/// Remembers the last build step an image build announced.
final class StepTracker: @unchecked Sendable {
    private let lock = NSLock()
    private var last: String?
    func note(_ line: String) {
        guard let step = BuilderImage.failingStep(in: [line]) else { return }
        lock.lock(); last = step; lock.unlock()
    }
    var step: String? { lock.lock(); defer { lock.unlock() }; return last }
}
