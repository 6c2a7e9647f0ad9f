import Foundation
import Synchronization

/// The output stage: every output of the plan through its format's writer
/// (one road: `--initrd`, `--image` and `--format` alike), each reported with
/// progress and digested; then the manifest and SBOM next to the first file
/// output; last, the kept rootfs directory committed by one rename.
struct OutputStage {
    var console: Console
    var runner = ProcessRunner()

    func run(_ plan: BuildPlan, composed: ComposeStage.Result, facts: ManifestFacts) async throws -> [BuildOutput] {
        var outputs: [BuildOutput] = []
        for output in plan.outputs {
            if output.format == .rootfs {
                // The build's own tree becomes the rootfs directory (renamed last, below), not a copy.
                outputs.append(BuildOutput(kind: output.kind, path: output.path, bytes: 0))
                continue
            }
            try Task.checkCancellation()
            outputs += try await write(output, plan: plan, source: composed.source)
        }
        // The tree's packages, read once for the manifest and the lock (rpm -qa for an RPM tree).
        let inventory = plan.manifestPath == nil && plan.lockPath == nil ? nil
            : try await PackageInventory.read(tree: composed.tree, runner: runner)
        if let manifestPath = plan.manifestPath, let inventory {
            try Task.checkCancellation()
            outputs += try await writeDocuments(plan, manifestPath: manifestPath, inventory: inventory,
                                                facts: facts, outputs: outputs)
        }
        if let lockPath = plan.lockPath, let inventory {
            try Task.checkCancellation()
            outputs.append(try writeLock(plan, path: lockPath, inventory: inventory))
        }
        if plan.keepRootfs {
            try Task.checkCancellation()
            // Replacing a tree removes the old one (seconds for a big tree): a phase, not a silence.
            let replacing = FS.exists(plan.rootfsDirectory)
            if replacing { console.phase("rootfs: replacing \(plan.rootfsDirectory)") }
            try FS.replaceDirectory(plan.rootfsDirectory, with: composed.tree)
            if replacing { console.endPhase() }
        }
        return outputs
    }

    /// One output: written with progress, then every file it made digested.
    func write(_ output: FormatOutput, plan: BuildPlan, source: TreeSource) async throws -> [BuildOutput] {
        console.phase("\(output.kind): \(output.path)")
        try FS.makeDirectories(FS.parent(output.path))
        var writer = ImageWriter(options: plan.imageOptions)
        writer.runner = runner
        let started = Date()
        let console = console
        let last = LastStats()
        writer.progress = { stats in
            last.set(stats)
            console.progress(Builder.rate(stats, since: started))
        }
        writer.note = { line in console.info("    " + line) }
        var written = try await writer.write(output, source: source)
        if let stats = last.get() { console.progress(Builder.rate(stats, since: started), final: true) }
        // Files are digested here; a directory output (an OCI layout) carries its manifest's digest from its writer.
        for index in written.indices where written[index].kind != "rootfs" && written[index].sha256 == nil
            && FS.isRegularFile(written[index].path) {
            written[index].sha256 = try SHA256.hexDigest(ofFile: written[index].path)
        }
        console.endPhase()
        return written
    }

    /// The manifest (and SBOM), each written to a temporary name and renamed.
    func writeDocuments(_ plan: BuildPlan, manifestPath: String, inventory: PackageInventory, facts: ManifestFacts,
                        outputs: [BuildOutput]) async throws -> [BuildOutput] {
        console.phase("manifest: \(manifestPath)")
        if let note = inventory.note { console.warning("manifest: \(note)") }
        console.info("    \(inventory.packages.count) packages (\(inventory.database.rawValue))")
        let manifest = BuildManifest.make(facts: facts, inventory: inventory, outputs: outputs)
        var documents = [("manifest", manifestPath, try manifest.json())]
        if let sbomPath = plan.sbomPath { documents.append(("sbom", sbomPath, try manifest.spdx())) }
        var written: [BuildOutput] = []
        for (kind, path, data) in documents {
            let temporary = FS.siblingTemporaryPath(for: path)
            guard FileManager.default.createFile(atPath: temporary, contents: data) else {
                throw RootfsError("cannot write \(path): \(FS.errnoText())")
            }
            do { try FS.rename(temporary, to: path) } catch { FS.remove(temporary); throw error }
            written.append(BuildOutput(kind: kind, path: path, bytes: Int64(data.count),
                                       sha256: SHA256.hexDigest(of: [UInt8](data))))
        }
        console.endPhase()
        return written
    }
}

extension OutputStage {
    /// `--lock FILE`: the tree's packages with their exact versions (the manifest's list).
    func writeLock(_ plan: BuildPlan, path: String, inventory: PackageInventory) throws -> BuildOutput {
        console.phase("lock: \(path)")
        let lock = try PackageLock(inventory: inventory, distro: plan.distro.name, osVersion: plan.config.osVersion ?? "",
                                   architecture: plan.architecture)
        try lock.write(to: path)
        console.info("    \(lock.packages.count) packages (\(inventory.database.rawValue))")
        console.endPhase()
        return BuildOutput(kind: "lock", path: path, bytes: FS.fileSize(path), sha256: try SHA256.hexDigest(ofFile: path))
    }
}

/// The last statistics a writer reported (its callback may run on another thread).
private final class LastStats: Sendable {
    private let value = Mutex<WriteStats?>(nil)
    func set(_ stats: WriteStats) { value.withLock { $0 = stats } }
    func get() -> WriteStats? { value.withLock { $0 } }
}
