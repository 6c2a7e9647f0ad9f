import ArgumentParser
import Foundation
import RootfsKit

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Write one image (any format) from a rootfs directory or tar archive.",
        discussion: """
        The format comes from --format, or from FILE's extension (.img raw, .qcow2, .vhd, .vmdk, .tar[.gz|.zst], \
        .initrd, .erofs, .squashfs, .iso); raw by default. For kernel+initrd, FILE is a name prefix: \
        FILE-kernel, FILE-initrd.img and FILE-cmdline are written.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory or tar archive.") var tree: String
    @Option(name: .short, help: ArgumentHelp("The image to write.", valueName: "FILE")) var output: String
    @Option(help: ArgumentHelp("The format (\(OutputFormat.names)).", valueName: "F")) var format: String?
    @Option(help: "Initrd compression (initrd, kernel+initrd, iso-bios).") var compression: Compression = .zstd
    @OptionGroup var imageFlags: ImageFlags
    @OptionGroup var compose: ComposeFlags
    @Flag(name: .customLong("agent-init"), help: "Require the agent to be /sbin/init.") var agentInit = false

    func run() async throws {
        let (tree, output, formatText, agentInit) = (tree, output, format, agentInit)
        let console = global.makeConsole()
        let flags = imageFlags, compose = compose, compression = compression
        try await CommandRunner.run {
            let format = try formatText.map(OutputFormat.parse) ?? OutputFormat.infer(fromPath: output) ?? .raw
            let options = flags.options(epoch: try sourceDateEpoch(), compression: compression)
            try ImageOptions.requireVHDXFixedFits(options, formats: [format])
            try RootfsChecker.requireTreeSource(at: tree, agentInit: agentInit)
            try FS.requireParentDirectory(of: output, option: "-o")
            try FormatOutput(format: format, path: FS.absolute(output)).requireReplaceable(option: "-o")
            // One writer per output at a time, as for `rootfs build`.
            let lock = try OutputLock(output: FS.absolute(output))
            defer { withExtendedLifetime(lock) {} }
            let (source, cleanup) = try TreeSource.composed(tree, overlays: try compose.specs(), near: FS.absolute(output))
            defer { cleanup() }
            let writer = ImageWriter(options: options)
            for o in try await writer.write(format, source: source, to: FS.absolute(output)) {
                console.result("\(o.kind): \(o.path)  \(formatBytes(o.bytes))")
            }
        }
    }
}
