import ArgumentParser
import Foundation
import RootfsKit

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Write a raw disk image (MBR, one ext4 partition) from a rootfs directory.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory.") var rootfs: String
    @Option(name: .short, help: ArgumentHelp("The image to write.", valueName: "FILE")) var output: String
    @Option(name: .customLong("free-space"), help: ArgumentHelp("Free space in the file system.", valueName: "MB"))
    var freeSpace: Int = 64
    @Flag(name: .customLong("agent-init"), help: "Require the agent to be /sbin/init.") var agentInit = false

    func validate() throws {
        guard freeSpace >= 0 else { throw ValidationError("--free-space must be 0 or more") }
    }

    func run() async throws {
        let (rootfs, output, freeSpace, agentInit) = (rootfs, output, freeSpace, agentInit)
        let console = global.makeConsole()
        try await CommandRunner.run {
            try requireTree(rootfs, agentInit: agentInit)
            try FS.requireParentDirectory(of: output, option: "-o")
            let (stats, uuid) = try await DiskImageWriter(freeSpaceMiB: freeSpace, epoch: try sourceDateEpoch())
                .write(tree: FS.absolute(rootfs), to: output)
            console.result("image: \(output)  \(formatBytes(stats.outputBytes)) (ext4 \(uuid) at 1 MiB)")
        }
    }
}
