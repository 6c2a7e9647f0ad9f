import Foundation

/// Which container engine (or none) runs a distro's hook.
public enum EngineChoice: String, Sendable, CaseIterable, Codable {
    /// The host when it has the distro's HOST_TOOLS, else the first engine that answers (Docker, then Podman).
    case auto
    case docker
    case podman
    /// Run the hook on this host (the default).
    case host

    /// USE_DOCKER=true / USE_PODMAN=true (Docker wins when both are set); nil when neither is.
    public static func fromEnvironment(_ env: [String: String]) -> EngineChoice? {
        func isTrue(_ name: String) -> Bool { ["true", "yes", "1"].contains((env[name] ?? "").lowercased()) }
        if isTrue("USE_DOCKER") { return .docker }
        if isTrue("USE_PODMAN") { return .podman }
        return nil
    }
}

/// One bind mount of a host path into a container.
public struct ContainerMount: Sendable, Equatable {
    public var source: String
    public var target: String
    public var readOnly: Bool

    public init(source: String, target: String, readOnly: Bool) {
        self.source = source
        self.target = target
        self.readOnly = readOnly
    }

    /// The `--mount` value (bind mounts; paths are checked to hold no comma).
    var mountOption: String {
        "type=bind,source=\(source),target=\(target)" + (readOnly ? ",readonly" : "")
    }
}

/// A `--ulimit NAME=SOFT:HARD` setting.
public struct ContainerUlimit: Sendable, Equatable {
    public var name: String
    public var soft: UInt64
    public var hard: UInt64

    public init(name: String, soft: UInt64, hard: UInt64) {
        self.name = name
        self.soft = soft
        self.hard = hard
    }

    var option: String { "\(name)=\(soft):\(hard)" }
}

/// Docker or Podman, driven through one interface. Every command is a
/// `ToolCommand` (data that tests can inspect); every difference between the
/// engines is an option here rather than a branch in the build.
public struct ContainerEngine: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable, Codable {
        case docker, podman

        /// How a user selects it on the command line.
        public var flag: String { "--\(rawValue)" }
        public var displayName: String { self == .docker ? "Docker" : "Podman" }
    }

    public var kind: Kind
    /// The client binary (a name looked up on PATH, or a path).
    public var binary: String
    /// The OCI runtime (`--runtime`), e.g. runc for Podman on hosts where crun fails.
    public var runtime: String?
    /// Resource limits for containers and image builds, never above the host's hard limits.
    public var ulimits: [ContainerUlimit]
    /// The capabilities the hook needs: no `--privileged`.
    public var capabilities: [String]
    /// `--security-opt` values (e.g. apparmor=unconfined where AppArmor would forbid mount(2)).
    public var securityOptions: [String]
    /// The network of containers and image builds (host: the package mirror is reached as from the host).
    public var network: String?
    /// Variables set for the client while it builds images (DOCKER_BUILDKIT=0: the classic builder,
    /// which honours --network host and names each step).
    public var buildEnvironment: [String: String]
    /// `--platform` of image builds and containers (linux/arm64 for an aarch64 build on an x86_64
    /// host: the engine runs the builder's binaries through the host's qemu-user binfmt entry);
    /// nil for the host's own architecture, where the engine's default is right.
    public var platform: String?

    /// The capabilities Kata's osbuilder grants its builder containers.
    public static let hookCapabilities = ["SYS_ADMIN", "SYS_CHROOT", "MKNOD"]

    public init(kind: Kind, binary: String? = nil, runtime: String? = nil, ulimits: [ContainerUlimit] = [],
                capabilities: [String] = ContainerEngine.hookCapabilities, securityOptions: [String] = [],
                network: String? = "host", buildEnvironment: [String: String]? = nil) {
        self.kind = kind
        self.binary = binary ?? kind.rawValue
        self.runtime = runtime
        self.ulimits = ulimits
        self.capabilities = capabilities
        self.securityOptions = securityOptions
        self.network = network
        self.buildEnvironment = buildEnvironment ?? (kind == .docker ? ["DOCKER_BUILDKIT": "0"] : [:])
    }

    /// The engine with the options this host needs: the client found on PATH, ulimits
    /// clamped to this process's hard limits, Podman on runc when runc is installed
    /// (PODMAN_RUNTIME / DOCKER_RUNTIME override), apparmor=unconfined only where AppArmor is on.
    public static func forHost(_ kind: Kind, environment env: [String: String] = ProcessInfo.processInfo.environment)
        -> ContainerEngine
    {
        let path = env["PATH"]
        let binary = ProcessRunner.which(kind.rawValue, path: path) ?? kind.rawValue
        var runtime: String?
        switch kind {
        case .podman:
            runtime = nonEmpty(env["PODMAN_RUNTIME"]) ?? (ProcessRunner.which("runc", path: path) != nil ? "runc" : nil)
        case .docker:
            runtime = nonEmpty(env["DOCKER_RUNTIME"])
        }
        var security: [String] = []
        if let enabled = try? String(contentsOfFile: "/sys/module/apparmor/parameters/enabled", encoding: .utf8),
           enabled.hasPrefix("Y")
        {
            security.append("apparmor=unconfined")
        }
        return ContainerEngine(kind: kind, binary: binary, runtime: runtime, ulimits: hostUlimits(),
                               securityOptions: security)
    }

    /// nofile and nproc, soft = hard = the host's hard limit, capped at values every
    /// engine accepts (Podman cannot raise nproc above 32768 without CAP_SYS_RESOURCE).
    public static func hostUlimits(nofileCeiling: UInt64 = 65536, nprocCeiling: UInt64 = 16384) -> [ContainerUlimit] {
        func hard(_ resource: __rlimit_resource) -> UInt64? {
            var limit = rlimit()
            guard getrlimit(__rlimit_resource_t(resource.rawValue), &limit) == 0 else { return nil }
            return UInt64(limit.rlim_max)  // RLIM_INFINITY is UInt64.max
        }
        var result: [ContainerUlimit] = []
        if let n = hard(RLIMIT_NOFILE) {
            let v = min(n, nofileCeiling)
            result.append(ContainerUlimit(name: "nofile", soft: v, hard: v))
        }
        if let n = hard(__RLIMIT_NPROC) {
            let v = min(n, nprocCeiling)
            result.append(ContainerUlimit(name: "nproc", soft: v, hard: v))
        }
        return result
    }

    // MARK: commands

    /// Asks the engine for its version: fails when the daemon does not answer.
    public func infoCommand() -> ToolCommand {
        ToolCommand(binary, ["info", "--format", kind == .docker ? "{{.ServerVersion}}" : "{{.Version.Version}}"])
    }

    /// Prints the image ID when `reference` is in the local store; fails otherwise.
    public func imageInspectCommand(_ reference: String) -> ToolCommand {
        ToolCommand(binary, ["image", "inspect", "--format", "{{.Id}}", reference])
    }

    /// Builds `tag` from `dockerfile` with `context` as build context.
    public func buildCommand(tag: String, dockerfile: String, context: String, labels: [String: String] = [:],
                             buildArguments: [String: String] = [:]) -> ToolCommand {
        var args = ["build"]
        if kind == .podman, let runtime { args += ["--runtime", runtime] }
        if let network { args += ["--network", network] }
        if let platform { args += ["--platform", platform] }
        for limit in ulimits { args += ["--ulimit", limit.option] }
        for key in labels.keys.sorted() { args += ["--label", "\(key)=\(labels[key]!)"] }
        for key in buildArguments.keys.sorted() { args += ["--build-arg", "\(key)=\(buildArguments[key]!)"] }
        args += ["--tag", tag, "--file", dockerfile, context]
        return ToolCommand(binary, args, environment: buildEnvironment)
    }

    /// Runs `arguments` with `entrypoint` in a new container, removed when it exits.
    public func runCommand(name: String, image: String, entrypoint: String, arguments: [String],
                           mounts: [ContainerMount], environment: [String: String],
                           workingDirectory: String?) -> ToolCommand {
        containerCommand(["run", "--rm"], name: name, image: image, entrypoint: entrypoint, arguments: arguments,
                         mounts: mounts, environment: environment, workingDirectory: workingDirectory)
    }

    /// Creates (does not start) the container `runCommand` would run, with nothing
    /// mounted: a remote engine cannot see this host's paths (RemoteHookRun.swift).
    /// `--rm`: the engine removes it when it exits, and also when the engine itself restarts
    /// after going away mid-build, so no container outlives the build.
    public func createCommand(name: String, image: String, entrypoint: String, arguments: [String],
                              environment: [String: String], workingDirectory: String?) -> ToolCommand {
        containerCommand(["create", "--rm"], name: name, image: image, entrypoint: entrypoint, arguments: arguments,
                         mounts: [], environment: environment, workingDirectory: workingDirectory)
    }

    /// Copies the host directory `source` into the (created) container, below `directory`.
    public func copyIntoCommand(_ source: String, container: String, directory: String) -> ToolCommand {
        ToolCommand(binary, ["cp", source, "\(container):\(directory)"])
    }

    /// Prints the container's `path` as a tar stream on standard output, owners kept.
    public func copyOutCommand(container: String, path: String) -> ToolCommand {
        ToolCommand(binary, ["cp", "\(container):\(path)", "-"])
    }

    /// Prints the container's whole file system as a tar stream. Podman's `cp … -` writes
    /// every owner as 0:0 (names kept, numbers lost); its export keeps the numbers.
    public func exportCommand(container: String) -> ToolCommand {
        ToolCommand(binary, ["export", container])
    }

    /// Starts a created container and waits, its output streamed; exits with the container's status.
    public func startAttachedCommand(_ name: String) -> ToolCommand {
        ToolCommand(binary, ["start", "--attach", name])
    }

    private func containerCommand(_ verb: [String], name: String, image: String, entrypoint: String, arguments: [String],
                                  mounts: [ContainerMount], environment: [String: String],
                                  workingDirectory: String?) -> ToolCommand {
        var args = verb + ["--name", name]
        if let runtime { args += ["--runtime", runtime] }
        if let network { args += ["--network", network] }
        if let platform { args += ["--platform", platform] }
        for cap in capabilities { args += ["--cap-add", cap] }
        for option in securityOptions { args += ["--security-opt", option] }
        for limit in ulimits { args += ["--ulimit", limit.option] }
        for mount in mounts { args += ["--mount", mount.mountOption] }
        for key in environment.keys.sorted() { args += ["--env", "\(key)=\(environment[key]!)"] }
        if let workingDirectory { args += ["--workdir", workingDirectory] }
        args += ["--entrypoint", entrypoint, image]
        return ToolCommand(binary, args + arguments)
    }

    /// Stops and removes a container (after Ctrl-C or a failure).
    public func removeContainerCommand(_ name: String) -> ToolCommand {
        ToolCommand(binary, ["rm", "--force", name])
    }

    /// Succeeds while a container of that name exists (running or not).
    public func containerInspectCommand(_ name: String) -> ToolCommand {
        ToolCommand(binary, ["container", "inspect", "--format", "{{.State.Status}}", name])
    }

    /// Removes the container and waits until the engine no longer knows it (a concurrent
    /// `rm` may return while another is still stopping it). Runs outside the caller's
    /// task, so that it completes after a cancellation too.
    public func removeContainer(_ name: String, timeout: Duration = .seconds(60)) async {
        let (remove, inspect) = (removeContainerCommand(name), containerInspectCommand(name))
        await Task.detached {
            let runner = ProcessRunner()
            _ = try? await runner.capture(remove)
            let clock = ContinuousClock(), deadline = clock.now + timeout
            while clock.now < deadline, (try? await runner.capture(inspect)) != nil {
                try? await Task.sleep(for: .milliseconds(200))
                _ = try? await runner.capture(remove)
            }
        }.value
    }

    /// Makes an image from a root file system tarball.
    public func importCommand(tarball: String, tag: String) -> ToolCommand {
        ToolCommand(binary, ["import", tarball, tag])
    }

    /// Prints an image's OS/architecture as the engine records it (linux/arm64); fails when it is absent.
    public func imagePlatformCommand(_ reference: String) -> ToolCommand {
        ToolCommand(binary, ["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", reference])
    }

    // MARK: detection

    /// Checks that the client is installed and that the engine answers; returns the
    /// engine's version. Errors say what to install or how to start the daemon.
    @discardableResult
    public func requireAnswering(runner: ProcessRunner = ProcessRunner(),
                                 environment env: [String: String] = ProcessInfo.processInfo.environment)
        async throws -> String
    {
        guard ProcessRunner.which(binary, path: env["PATH"]) != nil else {
            throw RootfsError(
                "\(kind.flag): the \(kind.displayName) client '\(kind.rawValue)' is not installed (not found on PATH)",
                hint: kind == .docker
                    ? "install it (apt-get install docker.io), use --podman, or build on the host (--engine host)"
                    : "install it (apt-get install podman runc), use --docker, or build on the host (--engine host)")
        }
        do {
            let out = try await runner.capture(infoCommand())
            return out.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        } catch let failure as ToolFailure {
            switch kind {
            case .docker:
                let host = nonEmpty(env["DOCKER_HOST"]).map { " at \($0) (DOCKER_HOST)" } ?? ""
                throw RootfsError(
                    "\(kind.flag): the Docker engine\(host) is not answering: is dockerd running?",
                    hint: "start it: `systemctl start docker`, or on a machine without systemd `scripts/start-docker.sh` "
                        + "(runs dockerd --iptables=false --bridge=none); check with `docker info`",
                    details: failure.outputTail.suffix(4).map { $0 })
            case .podman:
                throw RootfsError(
                    "\(kind.flag): Podman does not work on this host (`podman info` failed)",
                    hint: "run `podman info` to see why; with a remote Podman start its service (`systemctl start podman.socket`)",
                    details: failure.outputTail.suffix(4).map { $0 })
            }
        }
    }

    /// The first engine (Docker, then Podman) that is installed and answers.
    public static func firstAnswering(environment env: [String: String] = ProcessInfo.processInfo.environment,
                                      runner: ProcessRunner = ProcessRunner()) async -> ContainerEngine? {
        for kind in Kind.allCases {
            let engine = ContainerEngine.forHost(kind, environment: env)
            if (try? await engine.requireAnswering(runner: runner, environment: env)) != nil { return engine }
        }
        return nil
    }

    /// The image ID of `reference` in the local store, or nil.
    public func imageID(_ reference: String, runner: ProcessRunner = ProcessRunner()) async -> String? {
        guard let out = try? await runner.capture(imageInspectCommand(reference)) else { return nil }
        let id = out.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        return id.isEmpty ? nil : id
    }

    /// The image's `os/architecture` (linux/arm64), or nil when the engine does not know the image.
    public func imagePlatform(_ reference: String, runner: ProcessRunner = ProcessRunner()) async -> String? {
        guard let out = try? await runner.capture(imagePlatformCommand(reference)) else { return nil }
        let text = out.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty || text == "/" ? nil : text
    }
}

func nonEmpty(_ s: String?) -> String? {
    guard let s, !s.isEmpty else { return nil }
    return s
}
