import ArgumentParser
import Foundation
import RootfsKit

struct InitrdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "initrd", abstract: "Write an initrd (cpio) from a rootfs directory or tar archive.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory or tar archive.") var rootfs: String
    @Option(name: .short, help: ArgumentHelp("The initrd to write.", valueName: "FILE")) var output: String
    @Option(help: "Compression.") var compression: Compression = .zstd
    @OptionGroup var compose: ComposeFlags
    @Flag(name: .customLong("agent-init"), help: "Require the agent to be /sbin/init.") var agentInit = false

    func run() async throws {
        let (rootfs, output, compression, agentInit, compose) = (rootfs, output, compression, agentInit, compose)
        let console = global.makeConsole()
        try await CommandRunner.run {
            try requireTreeSource(rootfs, agentInit: agentInit)
            try FS.requireParentDirectory(of: output, option: "-o")
            let (source, cleanup) = try composedSource(rootfs, specs: try compose.specs(), near: FS.absolute(output))
            defer { cleanup() }
            let stats = try InitrdWriter(compression: compression, epoch: try sourceDateEpoch()).write(source: source, to: output)
            console.result("initrd: \(output)  \(formatBytes(stats.outputBytes)) (\(stats.entries) entries)")
        }
    }
}

/// The checks shared by the writers: a directory with an init and an agent.
func requireTree(_ path: String, agentInit: Bool) throws {
    guard FS.isDirectory(path) else {
        throw RootfsError("\(path) is not a directory", hint: "give the rootfs directory that `rootfs build` wrote")
    }
    try RootfsChecker(tree: GuestTree(root: FS.absolute(path))).require(agentInit: agentInit)
}
