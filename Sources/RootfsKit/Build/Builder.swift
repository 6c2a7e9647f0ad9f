import Foundation

/// Runs builds: the planner decides, then three stages run in order.
///
///     BuildOptions --BuildPlanner--> BuildPlan
///     HookStage    (work dir, helpers, build_rootfs on host or in a container) -> tree
///     ComposeStage (agent, init, build record, overlays, checker)               -> TreeSource
///     OutputStage  (every FormatOutput's writer, digests, manifest, rename)     -> [BuildOutput]
public struct Builder: Sendable {
    public var console: Console
    public var runner = ProcessRunner()

    public init(console: Console) { self.console = console }

    public func plan(_ options: BuildOptions) async throws -> BuildPlan {
        try await BuildPlanner(runner: runner).plan(options)
    }

    /// Runs the plan. Outputs appear only when complete; on any failure (or
    /// cancellation) temporary trees and files are removed and earlier outputs stay.
    public func run(_ plan: BuildPlan) async throws -> [BuildOutput] {
        if let problems = Preflight.error(plan.problems) { throw problems }
        try FS.makeDirectories(plan.buildDirectory)
        // One build per output at a time; a concurrent build of other outputs gets its own log.
        let locks = try plan.outputs.map(\.path).sorted().map { try OutputLock(output: $0) }
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
        let started = Date()
        do {
            for warning in plan.cacheWarnings { console.warning(warning) }
            console.info("cache: " + plan.treeCacheLine)

            let hooked = try await HookStage(console: console, runner: runner).run(plan, logPath: logPath)
            let outputs: [BuildOutput]
            do {
                let composed = try await ComposeStage(console: console).run(plan, hooked: hooked)
                try Preflight.requireKernel(plan, source: composed.source)
                outputs = try await OutputStage(console: console, runner: runner)
                    .run(plan, composed: composed, facts: plan.manifestFacts(agentSHA256: composed.agentSHA256))
            } catch {
                FS.remove(hooked.work)
                throw error
            }
            // Removing the hook's work directory (the whole tree, for image-only builds) takes
            // seconds: shown as a phase of its own instead of a silence after the last output.
            console.phase("cleanup: \(hooked.work)")
            FS.remove(hooked.work)
            console.endPhase()
            return outputs
        } catch {
            // build.log and --log-file end with what stopped the build, its hint and a summary.
            let phase = console.currentPhaseName.map { " in phase '\($0)'" } ?? ""
            let summary = String(format: "build of %@ failed after %.1f s%@ (log: %@)",
                                 plan.distro.name, Date().timeIntervalSince(started), phase, logPath)
            if error is CancellationError || Task.isCancelled {
                console.record("build of \(plan.distro.name) interrupted\(phase)")
            } else {
                console.report(error)
                console.info(summary)
            }
            throw error
        }
    }

    /// `1234 entries, 56.0 MiB in, 20.1 MiB out, 80.2 MiB/s`
    static func rate(_ stats: WriteStats, since start: Date) -> String {
        let seconds = max(Date().timeIntervalSince(start), 0.001)
        return "\(stats.entries) entries, \(formatBytes(stats.inputBytes)) in, \(formatBytes(stats.outputBytes)) out, "
            + "\(formatBytes(Int64(Double(stats.inputBytes) / seconds)))/s"
    }
}

extension BuildPlan {
    /// What the manifest says about this build, as plain facts.
    func manifestFacts(agentSHA256: String) -> ManifestFacts {
        var facts = ManifestFacts(distro: distro.name, osName: config.osName ?? distro.name, osVersion: config.osVersion ?? "",
                      architecture: architecture, agentGuestPath: agent.guestPath, agentSource: agent.sourcePath,
                      agentSHA256: agentSHA256, agentInit: agent.isInit, packages: config.packages,
                      extraPackages: extraPackages, initProcess: agent.isInit ? "agent" : config.initProcess,
                      compression: compression, freeSpaceMiB: imageOptions.freeSpaceMiB, sourceDateEpoch: epoch,
                      buildTime: epoch ?? Int(Date().timeIntervalSince1970))
        facts.toolCommit = toolCommit
        facts.config = recordedConfig
        return facts
    }
}
