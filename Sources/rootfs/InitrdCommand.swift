import ArgumentParser
import Foundation
import RootfsKit

struct InitrdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "initrd", abstract: "Write an initrd (cpio) from a rootfs directory or tar archive.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory or tar archive.") var rootfs: String
    @Option(name: [.short, .customLong("output")], help: ArgumentHelp("The initrd to write.", valueName: "FILE")) var output: String
    @Option(help: ArgumentHelp("Compression.", valueName: Compression.valueNames)) var compression: Compression = .zstd
    @OptionGroup var compose: ComposeFlags
    @Flag(name: .customLong("agent-init"), help: "Require the agent to be /sbin/init.") var agentInit = false

    func run() async throws {
        let (rootfs, output, compression, agentInit, compose) = (rootfs, output, compression, agentInit, compose)
        let console = global.makeConsole()
        try await CommandRunner.run {
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            let rootfs = try await exports.resolve(rootfs)
            try RootfsChecker.requireTreeSource(at: rootfs, agentInit: agentInit)
            try FS.requireFileOutputName(output, option: "-o")
            try FS.requireParentDirectory(of: output, option: "-o")
            try FS.requireReplaceableOutput(output, option: "-o")
            let lock = try OutputLock(output: FS.absolute(output))
            defer { withExtendedLifetime(lock) {} }
            let (source, cleanup) = try TreeSource.composed(rootfs, overlays: try await compose.specs(exports: exports), near: FS.absolute(output))
            defer { cleanup() }
            let stats = try InitrdWriter(compression: compression, epoch: try sourceDateEpoch()).write(source: source, to: output)
            console.info("\(stats.entries) entries, \(compression.rawValue)")
            console.result(try BuildOutput.file(kind: "initrd", path: output).resultLine)
        }
    }
}
