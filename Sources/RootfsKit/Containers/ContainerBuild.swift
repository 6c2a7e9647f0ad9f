import Foundation
import Synchronization

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
    /// rootfs's package cache (ROOTFS_PACKAGE_CACHE), read-write: shared with host builds.
    public static let packageCache = root + "/package-cache"
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
    /// Why the engine is taken for remote (`DOCKER_HOST=tcp://…`), or nil for the local engine.
    /// A remote engine gets nothing bind-mounted: the inputs are copied in and the tree comes
    /// back as a tar stream (RemoteHookRun.swift).
    public var remote: String?

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

    /// Why `kind` is reached as a remote engine, from the environment the engine
    /// commands see; nil for the local engine (bind mounts, the faster way).
    /// Docker: DOCKER_HOST other than the default socket, or a DOCKER_CONTEXT other than
    /// `default`. Podman: CONTAINER_HOST or CONTAINER_CONNECTION (podman then talks to
    /// that service, as with --remote).
    public static func remoteReason(_ kind: ContainerEngine.Kind, environment env: [String: String]) -> String? {
        switch kind {
        case .docker:
            if let host = nonEmpty(env["DOCKER_HOST"]), host != "unix:///var/run/docker.sock", host != "unix:///run/docker.sock" {
                return "DOCKER_HOST=\(host)"
            }
            if let context = nonEmpty(env["DOCKER_CONTEXT"]), context != "default" { return "DOCKER_CONTEXT=\(context)" }
        case .podman:
            if let host = nonEmpty(env["CONTAINER_HOST"]) { return "CONTAINER_HOST=\(host)" }
            if let connection = nonEmpty(env["CONTAINER_CONNECTION"]) { return "CONTAINER_CONNECTION=\(connection)" }
        }
        return nil
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
        if let cache = invocation.environment["ROOTFS_PACKAGE_CACHE"], cache.hasPrefix("/"), FS.isDirectory(cache) {
            mounts.append(ContainerMount(source: cache, target: ContainerPaths.packageCache, readOnly: false))
        }
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
        let (arguments, env, workdir) = containerSide(of: invocation, mounts: mounts)
        return engine.runCommand(name: containerName, image: image.tag, entrypoint: "bash",
                                 arguments: arguments, mounts: mounts, environment: env, workingDirectory: workdir)
    }

    /// The hook's bash arguments, environment and working directory as the container sees
    /// them: host paths under `mounts` mapped to their container paths.
    func containerSide(of invocation: HookInvocation, mounts: [ContainerMount])
        -> (arguments: [String], environment: [String: String], workingDirectory: String) {
        let map = { (path: String) in ContainerBuild.map(path, mounts: mounts) ?? path }
        var env: [String: String] = [:]
        for (key, value) in invocation.environment where !ContainerBuild.hostOnlyVariables.contains(key) {
            env[key] = value.hasPrefix("/") ? ContainerBuild.map(value, mounts: mounts) ?? value : value
        }
        env.merge(proxyEnvironment) { $1 }
        let workdir = ContainerBuild.map(invocation.workingDirectory, mounts: mounts) ?? ContainerPaths.distro
        return (invocation.bashArguments(mapping: map), env, workdir)
    }

    /// The engine platform of a build for `architecture` (linux/arm64 for aarch64), nil when it is
    /// the host's: a foreign builder runs its binaries through the binfmt entry the plan set up
    /// (ForeignEmulation; Debian's qemu-user-static registers it with the F flag, so the
    /// emulator is found from inside the container's mount namespace too).
    public static func platform(for architecture: String) -> String? {
        guard architecture != hostArchitecture() else { return nil }
        return "linux/" + OCIArchitecture.name(architecture)
    }

    /// Decides the container side of a plan: checks the engine answers and renders
    /// the builder image (built later, by `HookExecutor.prepare`).
    public static func make(engine: ContainerEngine, distro: Distro, config: DistroConfig, architecture: String,
                            builderBase: String?, environment env: [String: String],
                            runner: ProcessRunner = ProcessRunner()) async throws -> ContainerBuild {
        try await engine.requireAnswering(runner: runner, environment: env)
        let platform = platform(for: architecture)
        let image = try await BuilderImage.make(
            distro: distro, osName: config.osName ?? distro.name, osVersion: config.osVersion ?? "latest",
            architecture: architecture, configValues: config.values,
            builderBase: builderBase ?? nonEmpty(env["BUILDER_BASE"]), registry: nonEmpty(env["IMAGE_REGISTRY"]),
            environment: env, platform: platform,
            baseImageID: { await engine.imageID($0, runner: runner) })
        var build = ContainerBuild(engine: engine, image: image, proxyEnvironment: proxies(from: env),
                                   containerName: uniqueName(distro: distro.name))
        build.engine.platform = platform
        build.remote = remoteReason(engine.kind, environment: env)
        // A remote Podman service runs containers with its own runtime: `podman --remote`
        // has no --runtime flag.
        if build.remote != nil && engine.kind == .podman { build.engine.runtime = nil }
        return build
    }
}
