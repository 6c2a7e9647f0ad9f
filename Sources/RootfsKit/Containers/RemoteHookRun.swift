import Foundation
import Synchronization

/// The hook in a builder container on a remote engine (DOCKER_HOST=tcp://…, ssh://…,
/// another socket; DOCKER_CONTEXT; CONTAINER_HOST for Podman). The engine cannot see
/// this host's files, so nothing is bind-mounted:
///
///     create   the container, as the local path would run it, with no mounts
///     copy in  the distro directory (and library and script_dir) and the helpers,
///              staged as /rootfs-build, through the engine's API (`cp DIR NAME:/`)
///     start    attached: the hook's output streams as on the host
///     copy out /rootfs-build/rootfs as a tar stream, owners and devices kept
///              (`cp NAME:PATH -`), so the client needs no root to receive it
///     remove   the container, on success, failure and cancellation alike
///
/// The builder image is built on the engine from the distro directory as the build
/// context, as on a local engine. The local engine keeps the bind mounts: faster, and
/// the plan says which way a build goes and why.
struct RemoteHookRun {
    var build: ContainerBuild
    var runner: ProcessRunner

    /// Wraps the hook: when it succeeds, print a marker line and wait until the tree has
    /// been copied out (a file appears), then exit with the hook's status. The container
    /// is `--rm`, so the copy must happen while it still runs. A fixed script: nothing in
    /// it comes from the distro or the guest. (A hook can print the marker itself: it
    /// then only ends its own build early.)
    static let wrapper = """
        "${@:2}"; s=$?
        if [ "$s" -eq 0 ]; then
            printf '\\n%s\\n' "$1"
            while [ ! -e /rootfs-build/copied ]; do sleep 0.2; done
        fi
        exit "$s"
        """

    func run(_ invocation: HookInvocation, onLine: @escaping @Sendable (String) -> Void) async throws {
        let engine = build.engine, name = build.containerName, endpoint = build.remote ?? "remote"
        // Beside the hook's work directory (same file system), never inside it: the
        // confinement check allows only the tree there.
        let stage = try FS.makeSiblingTemporaryDirectory(for: FS.parent(invocation.rootfsDirectory))
        defer { FS.remove(stage) }
        let staged = stage + "/rootfs-build"
        let mounts = build.mounts(for: invocation)
        try await stageInputs(mounts, into: staged)
        let copiedMarker = stage + "/copied"
        FileManager.default.createFile(atPath: copiedMarker, contents: nil)

        // The same paths as the local run: staged copies stand where the mounts would be.
        var (arguments, environment, workdir) = build.containerSide(of: invocation, mounts: mounts)
        // The tree always comes back as a directory copied out; a host path means nothing there.
        environment["ROOTFS_TAR"] = nil
        // The package cache is a directory of this host: a remote engine cannot mount it.
        environment["ROOTFS_PACKAGE_CACHE"] = nil
        let marker = "rootfs-remote-hook-done-" + String(UInt64.random(in: 0 ... .max), radix: 16)
        let create = engine.createCommand(name: name, image: build.image.tag, entrypoint: "bash",
                                          arguments: ["--noprofile", "--norc", "-c", Self.wrapper, "rootfs-remote", marker, "bash"] + arguments,
                                          environment: environment, workingDirectory: workdir)
        onLine("container: \(name) on a remote engine (\(endpoint)): inputs copied in, the tree copied out as a tar "
               + "(\(engine.kind.rawValue) rm --force \(name) stops it)")
        let fetched = stage + "/tree.tar"
        let copy = CopyOut()
        do {
            try await runner.capture(create)
            try await runner.capture(engine.copyIntoCommand(staged, container: name, directory: "/"))
            try await withTaskCancellationHandler {
                try await runner.stream(engine.startAttachedCommand(name)) { [runner] line in
                    guard line == marker else { return onLine(line) }
                    // The hook succeeded and the container waits: copy the tree out, then let it exit.
                    copy.start {
                        try await runner.capture(engine.kind == .podman ? engine.exportCommand(container: name)
                                                    : engine.copyOutCommand(container: name, path: ContainerPaths.rootfs),
                                                 standardOutputTo: fetched)
                        try await runner.capture(engine.copyIntoCommand(copiedMarker, container: name, directory: "/rootfs-build/"))
                    }
                }
            } onCancel: {
                let remove = engine.removeContainerCommand(name)
                Task.detached { _ = try? await ProcessRunner().capture(remove) }
            }
            guard try await copy.wait() else {
                throw RootfsError("the builder container on the remote engine (\(endpoint)) ended without handing back the tree")
            }
        } catch {
            await engine.removeContainer(name)
            if error is CancellationError { throw error }
            // The engine itself gone (the hook's own failure leaves it answering)?
            if (try? await runner.capture(engine.infoCommand())) == nil {
                throw RootfsError("the remote \(engine.kind.displayName) engine (\(endpoint)) went away during the build",
                                  hint: "nothing was written to the outputs; the builder container is created with --rm, so the engine removes it when it comes back",
                                  details: (error as? ToolFailure)?.outputTail ?? [])
            }
            if let failure = error as? ToolFailure, failure.command.arguments.first != "start" {
                throw RootfsError("the remote \(engine.kind.displayName) engine (\(endpoint)) failed at `\(failure.command.arguments.prefix(2).joined(separator: " "))` (\(failure.status))",
                                  hint: "check that the engine answers (`\(engine.kind.rawValue) info` with the same environment); nothing was written to the outputs",
                                  details: failure.outputTail)
            }
            throw error
        }
        // Docker's copy names the tree `rootfs/…`; Podman's export is the whole container.
        let prefix = engine.kind == .podman ? String(ContainerPaths.rootfs.dropFirst()) : "rootfs"
        try receive(fetched, prefix: prefix, wholeContainer: engine.kind == .podman, into: invocation, scratch: stage)
    }

    /// /rootfs-build as the local run would mount it (ContainerBuild.mounts, so the two never
    /// disagree): each read-only input copied to its mount target, an empty rootfs/ for the
    /// tree. The package cache is a host directory a remote engine cannot share: left out.
    /// `cp -a` keeps the distro's own symlinks as symlinks; each path is one argument.
    func stageInputs(_ mounts: [ContainerMount], into staged: String) async throws {
        try FS.makeDirectories(staged + "/rootfs")
        for mount in mounts where mount.target != ContainerPaths.rootfs && mount.target != ContainerPaths.packageCache {
            let target = staged + mount.target.dropFirst(ContainerPaths.root.count)
            try await runner.capture(ToolCommand("cp", ["-a", "--", mount.source, target]))
        }
    }

    /// The copied-out tar names everything under `prefix/` (Docker's copy: `rootfs/`; Podman's
    /// export: the whole container, of which `rootfs-build/rootfs/` is kept): rewritten once with that
    /// prefix dropped, it is the tree's tar (what a rootless hook leaves in ROOTFS_TAR),
    /// else extracted into the tree directory with its owners (root).
    func receive(_ fetched: String, prefix text: String, wholeContainer: Bool, into invocation: HookInvocation, scratch: String) throws {
        let prefix = Array(text.utf8)
        let strip: (inout TreeItem) throws -> Void = { item in
            item.path = try Self.dropPrefix(prefix, from: item.path)
            if let target = item.hardLinkTo { item.hardLinkTo = try Self.dropPrefix(prefix, from: target) }
        }
        let tarTransport = invocation.environment["ROOTFS_TAR"]
        let tree = tarTransport ?? scratch + "/tree-stripped.tar"
        var archiver = TreeArchiver(format: .paxRestricted, compression: .none, transform: strip)
        if wholeContainer { archiver.include = { $0.path == prefix || $0.path.starts(with: prefix + [47]) } }
        _ = try archiver.write(source: .archive(fetched), to: tree)
        unlink(fetched)
        if tarTransport == nil {
            rmdir(invocation.rootfsDirectory)
            try TreeExtractor(destination: invocation.rootfsDirectory).extract(.archive(tree))
        }
    }

    static func dropPrefix(_ prefix: [UInt8], from path: [UInt8]) throws -> [UInt8] {
        // The walk's own root ("."), and the copied directory itself: both the tree's root.
        if path == [46] || path == prefix || path == prefix + [47] { return [46] }
        guard path.starts(with: prefix + [47]) else {
            throw RootfsError("the remote engine's copy of the tree holds \(String(decoding: path, as: UTF8.self).debugDescription) outside rootfs/",
                              hint: "the engine's `cp` output is not what was asked for; nothing was written")
        }
        return Array(path.dropFirst(prefix.count + 1))
    }
}

/// The copy-out started from the output stream (a synchronous callback), awaited after it.
final class CopyOut: Sendable {
    private let task = Mutex<Task<Void, any Error>?>(nil)

    func start(_ body: @escaping @Sendable () async throws -> Void) {
        task.withLock { current in
            guard current == nil else { return }
            current = Task { try await body() }
        }
    }

    /// Whether a copy ran (and it succeeded: its error is thrown).
    func wait() async throws -> Bool {
        guard let running = task.withLock({ $0 }) else { return false }
        try await running.value
        return true
    }
}
