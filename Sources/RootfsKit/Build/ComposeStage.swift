import Foundation

/// The compose stage: the agent (and init), the build record, the overlays
/// and the checker, on the tree the hook left; it gives the `TreeSource`
/// every writer reads (the directory, or rootless, a tar with the owners restored).
struct ComposeStage {
    var console: Console

    struct Result: Sendable {
        /// The tree directory (for the package inventory, and committed as the rootfs output).
        var tree: String
        var source: TreeSource
        var agentSHA256: String
    }

    func run(_ plan: BuildPlan, hooked: HookStage.Result) async throws -> Result {
        let tree = hooked.tree
        let guest = GuestTree(root: tree)
        let installer = AgentInstaller(tree: guest)
        let agentSHA256 = try await plan.profile.install(plan.agent, tree: guest, console: console)
        var record = BuildRecord(
            toolVersion: RootfsVersion.version, distro: plan.distro.name, osName: plan.config.osName ?? plan.distro.name,
            osVersion: plan.config.osVersion ?? "", architecture: plan.architecture, packages: plan.config.packages,
            extraPackages: plan.extraPackages, agentPath: plan.agent.guestPath,
            agentSHA256: agentSHA256, agentInit: plan.agent.isInit,
            buildTime: plan.epoch ?? Int(Date().timeIntervalSince1970))
        plan.profile.complete(&record, agent: plan.agent, environment: plan.hookEnvironment)
        try installer.writeFile(BuildRecord.guestPath, contents: Array(record.yaml.utf8), mode: 0o644)
        if !plan.overlays.isEmpty {
            console.phase("compose: \(plan.overlays.map(\.description).joined(separator: ", "))")
            try OverlayApplier(tree: guest).apply(plan.overlays)
        }
        if !plan.profile.rootfsOnly {
            try RootfsChecker(tree: guest).require(agentInit: plan.agent.isInit, agentNames: [plan.agent.guestName],
                                                   architecture: Architecture(rawValue: plan.architecture))
        }
        // Rootless: the finished tree travels as a tar with the owners restored; every writer reads it.
        var source = TreeSource.directory(tree)
        if let rootless = hooked.rootless {
            let staged = hooked.work + "/tree.tar"
            try rootless.writeTar(to: staged, epoch: plan.epoch)
            source = .archive(staged)
        }
        console.endPhase()
        return Result(tree: tree, source: source, agentSHA256: agentSHA256)
    }
}
