import Foundation
import Synchronization

/// Runs a hook invocation: bash on this host, or the same bash in a builder container.
public enum HookExecutor: Sendable {
    case host
    case container(ContainerBuild)
    /// `--from-image`: no hook; the image's layers become the tree (ImageBuild.swift).
    case image(ImageReference, label: String)

    /// Makes what the hook needs before it runs (the builder image, when missing).
    public func prepare(console: Console, runner: ProcessRunner, scratchDirectory: String) async throws {
        guard case .container(let build) = self else { return }
        let engine = build.engine, image = build.image
        if let id = await engine.imageID(image.tag, runner: runner) {
            console.info("builder image: \(image.tag) (\(engine.kind.rawValue), \(id.prefix(19)), up to date)")
            try await Self.requirePlatform(of: build, runner: runner)
            return
        }
        console.phase("builder image: \(image.tag) (\(engine.kind.rawValue)\(image.platform.map { " for " + $0 } ?? ""), from \(image.templatePath))")
        let dockerfile = FS.siblingTemporaryPath(for: scratchDirectory + "/Dockerfile")
        try image.dockerfile.write(toFile: dockerfile, atomically: false, encoding: .utf8)
        defer { FS.remove(dockerfile) }
        let steps = StepTracker()
        let command = engine.buildCommand(tag: image.tag, dockerfile: dockerfile, context: image.context,
                                          labels: [BuilderImage.inputsLabel: image.inputsHash],
                                          buildArguments: build.proxyEnvironment.merging(build.image.buildArguments) { $1 })
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
            if let platform = image.platform, let base = image.baseImage,
               let basePlatform = await engine.imagePlatform(base, runner: runner), basePlatform != platform {
                throw Self.platformMismatch(build, image: base, has: basePlatform, wants: platform)
            }
            throw RootfsError("building the builder image \(image.tag) with \(engine.kind.rawValue) failed at "
                              + (steps.step ?? "an unknown step") + " (\(failure.status))",
                              hint: hint, details: failure.outputTail)
        }
        try await Self.requirePlatform(of: build, runner: runner)
    }

    /// A foreign build's builder image must be of the target's platform: an engine that quietly
    /// ran an amd64 base for linux/arm64 would give an amd64 tree under an aarch64 name.
    static func requirePlatform(of build: ContainerBuild, runner: ProcessRunner) async throws {
        guard let platform = build.image.platform else { return }
        guard let found = await build.engine.imagePlatform(build.image.tag, runner: runner) else { return }
        if found != platform { throw platformMismatch(build, image: build.image.tag, has: found, wants: platform) }
    }

    static func platformMismatch(_ build: ContainerBuild, image: String, has found: String, wants platform: String) -> RootfsError {
        let kind = build.engine.kind
        // Docker 20.10 without experimental features ignores `import --platform`; a FROM scratch build keeps it.
        let make = kind == .docker ? "docker build --platform \(platform)` of `FROM scratch` + `ADD rootfs.tar /"
            : "podman import --os linux --arch \(platform.split(separator: "/").last ?? "") rootfs.tar IMAGE"
        return RootfsError("\(kind.displayName) cannot run the builder for \(platform): \(image) is a \(found) image, "
                           + "and this build is for \(platform) (--arch)",
                           hint: "give a \(platform) base image with --builder-base IMAGE (BUILDER_BASE), e.g. made from a "
                               + "\(platform) root file system with `\(make)`"
                               + (build.image.baseImage.map { "; the base now is \($0)" } ?? ""))
    }

    /// Runs the hook. A hook that fails throws `ToolFailure` (the same report as
    /// on the host); an engine that cannot start the container throws `RootfsError`.
    /// On cancellation the container is removed before this returns.
    public func run(_ invocation: HookInvocation, runner: ProcessRunner,
                    onLine: @escaping @Sendable (String) -> Void) async throws {
        switch self {
        case .host:
            try await runner.stream(invocation.hostCommand, onLine: onLine)
        case .image(let reference, _):
            try ImageBuild.write(reference, into: invocation, onLine: onLine)
        case .container(let build) where build.remote != nil:
            try await RemoteHookRun(build: build, runner: runner).run(invocation, onLine: onLine)
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
                if let failure = error as? ToolFailure, failure.status == .exited(125) {
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
        case .image(_, let label): return "image \(label)"
        case .container(let b): return "\(b.engine.kind.rawValue) (builder image \(b.image.tag))"
        }
    }
}

/// Remembers the last build step an image build announced.
final class StepTracker: Sendable {
    private let last = Mutex<String?>(nil)
    func note(_ line: String) {
        guard let step = BuilderImage.failingStep(in: [line]) else { return }
        last.withLock { $0 = step }
    }
    var step: String? { last.withLock { $0 } }
}
