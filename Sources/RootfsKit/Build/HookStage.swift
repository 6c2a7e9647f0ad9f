import Foundation

/// The hook stage: a fresh work directory beside the rootfs directory, the
/// helper file, build_rootfs() run on the host or in a builder container,
/// the confinement check, and (rootless) the hook's tar unpacked with its
/// owners kept aside. Used by `rootfs build` and by `rootfs builder seed`.
public struct HookStage: Sendable {
    public var console: Console
    public var runner = ProcessRunner()

    public init(console: Console, runner: ProcessRunner = ProcessRunner()) {
        self.console = console
        self.runner = runner
    }

    /// What the hook left: its work directory (the caller removes it), the tree in it,
    /// and, rootless, the owners and modes the tree could not hold.
    public struct Result {
        public var work: String
        public var tree: String
        public var rootless: RootlessTree?
    }

    /// Runs build_rootfs() into a new work directory. On failure the work directory is removed.
    public func run(_ plan: BuildPlan, logPath: String) async throws -> Result {
        // Before anything is written: another architecture's maintainer scripts need qemu-user.
        try await plan.emulation?.setUp(runner: runner, console: console)
        let work = try FS.makeSiblingTemporaryDirectory(for: plan.rootfsDirectory)
        do {
            return try await run(plan, work: work, logPath: logPath)
        } catch {
            FS.remove(work)
            throw error
        }
    }

    private func run(_ plan: BuildPlan, work: String, logPath: String) async throws -> Result {
        // mkdtemp makes it 0700: apt's _apt sandbox user could not reach the tree below it, and
        // a root build would then own apt's partial directories differently from a rootless one.
        chmod(work, 0o755)
        let tree = work + "/rootfs"
        // Held from before the hook runs until its tree is stored: another build with the same key
        // waits here, then finds the entry instead of running the hook too.
        var fillLock: OutputLock?
        func lockForFilling(_ cache: TreeCache, _ key: String) async throws -> OutputLock? {
            try await cache.lockForFilling(key) { [console] holder in
                console.info("tree cache: waiting for another build filling \(key.prefix(16)) (pid \(holder))")
            }
        }
        if let cache = plan.treeCache, let inputs = plan.treeCacheInputs, ["miss", "refresh", "incremental"].contains(plan.treeCacheOutcome.value.result) {
            fillLock = try await lockForFilling(cache, inputs.key)
            if plan.treeCacheOutcome.value.result == "miss", cache.lookup(inputs).hit {
                plan.treeCacheOutcome.set(.init(result: "hit", key: inputs.key, why: ["filled by another build while this one waited"]))
            }
        }
        if let cache = plan.treeCache, let inputs = plan.treeCacheInputs, plan.treeCacheOutcome.value.result == "hit" {
            console.phase("tree cache: hit \(inputs.key.prefix(16)): build_rootfs skipped")
            if inputs.repository.hasPrefix("unknown") {
                // docs/CLI.md, "Caches": without a readable repository state a mirror update is not seen.
                console.warning("tree cache: the repository's state is \(inputs.repository): the cached tree is used as it is, "
                                + "however old; --refresh rebuilds it from the repository")
            }
            // Rootless, the entry's owners are kept aside as the hook's own tar's are.
            let staged = plan.transport == .tar ? RootlessTree(root: tree) : nil
            if let why = cache.restore(inputs, to: tree, extract: staged.map { staged in { try staged.extract($0) } }) {
                console.warning("tree cache: \(why); running build_rootfs")
                plan.treeCacheOutcome.set(.init(result: "miss", key: inputs.key, why: [why]))
                if fillLock == nil { fillLock = try await lockForFilling(cache, inputs.key) }
            } else {
                console.endPhase()
                return Result(work: work, tree: tree, rootless: staged)
            }
        }
        let helper = work + "/hook-helpers.sh"
        var invocation = plan.hookInvocation(rootfs: tree, helperPath: helper)
        if let cache = plan.treeCache, let base = plan.incrementalBase, plan.treeCacheOutcome.value.result == "incremental" {
            console.phase("tree cache: incremental from \(base.key.prefix(16)): build_rootfs skipped, extend_rootfs \(base.adding.joined(separator: " "))")
            if let why = cache.restore(base.inputs, to: tree) {
                console.warning("tree cache: the base \(why); running build_rootfs")
                plan.treeCacheOutcome.set(.init(result: "miss", key: plan.treeCacheInputs?.key ?? "", why: ["the base " + why]))
            } else {
                invocation.extendPackages = base.adding
            }
            console.endPhase()
        }
        try FS.makeDirectories(tree)
        try HookLibrary.text.write(toFile: helper, atomically: false, encoding: .utf8)

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
        console.endPhase()
        if let cache = plan.treeCache, let inputs = plan.treeCacheInputs,
           ["miss", "refresh", "incremental"].contains(plan.treeCacheOutcome.value.result) {
            console.phase("tree cache: storing \(inputs.key.prefix(16))")
            do {
                // Rootless: nothing was added to the tree yet, so every item gets the hook's own owner back.
                try cache.store(inputs, tree: tree, transform: rootless.map { staged in { staged.restore(&$0) } })
            } catch {
                console.warning("tree cache: the tree could not be stored (\(error)); the build goes on")
                cache.remember(inputs)
            }
            console.endPhase()
        }
        withExtendedLifetime(fillLock) {}
        return Result(work: work, tree: tree, rootless: rootless)
    }

    /// Runs build_rootfs (its tree given by `invocation`) through the plan's executor.
    public func runHook(_ plan: BuildPlan, invocation: HookInvocation, logPath: String) async throws {
        try await plan.hookExecutor.prepare(console: console, runner: runner, scratchDirectory: FS.parent(invocation.rootfsDirectory))
        let function = invocation.extendPackages == nil ? "build_rootfs" : "extend_rootfs"
        if case .image(_, let label) = plan.hookExecutor {
            console.phase("image: \(label) (layers applied in process)")
        } else {
            console.phase("\(function): \(plan.distro.name) \(plan.config.osVersion ?? "") (\(plan.distro.directory))"
                          + (plan.hookExecutor.isHost ? "" : " in \(plan.hookExecutor.description)"))
        }
        console.detail("running: \(invocation.hostCommand.environment.count) variables, bash \(function) \(invocation.rootfsDirectory)"
                       + (invocation.extendPackages.map { " " + $0.joined(separator: " ") } ?? ""))
        do {
            if plan.hookExecutor.isHost {
                // Daemons the hook started (gpg-agent...) are stopped when it ends, success or not.
                // In a container they end with the container (its own PID namespace).
                try await OrphanReaper.stoppingOrphans {
                    try await plan.hookExecutor.run(invocation, runner: runner) { [console] line in console.toolLine(line) }
                }
            } else {
                try await plan.hookExecutor.run(invocation, runner: runner) { [console] line in console.toolLine(line) }
            }
        } catch let failure as ToolFailure {
            // --locked: a version the repository no longer has is named, with what to do.
            if let lock = plan.locked, let gone = lock.missing(in: failure.outputTail) {
                throw RootfsError("the repository has no version \(gone.version) of package \(gone.name), which the lock file pins (--locked)",
                                  hint: "point REPO_URL at a snapshot of the repository the lock was written from, or write a new lock with --lock; the full output is in \(logPath)",
                                  details: failure.outputTail.suffix(8).filter { $0.count < 400 })
            }
            // A hook's own `die` message says best what went wrong: it leads the error.
            let died = failure.outputTail.last(where: { $0.hasPrefix("ERROR: ") }).map { ": " + $0.dropFirst("ERROR: ".count) } ?? ""
            let hint = failure.outputTail.last { $0.hasPrefix("HINT: ") }.map { $0.dropFirst("HINT: ".count) + "; " } ?? ""
            throw RootfsError("\(function)() of distro '\(plan.distro.name)' failed (\(failure.status))\(died)",
                              hint: hint + (function == "build_rootfs" ? "" : "--no-cache builds it in full; ") + "the hook is \(function)() in \(plan.distro.libraryPath); the full output is in \(logPath)",
                              details: failure.outputTail)
        }
        try Task.checkCancellation()
    }
}
