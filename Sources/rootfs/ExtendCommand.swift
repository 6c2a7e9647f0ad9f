import ArgumentParser
import Foundation
import RootfsKit

struct ExtendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extend",
        abstract: "Add overlays to an existing initrd, tar or raw ext4 image without rebuilding the distro.",
        discussion: "The image keeps its format and compression. IMAGE is replaced (or NEW written) only when complete.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The image to extend (initrd, tar[.gz|.zst], raw ext4 disk or bare ext4).") var image: String
    @OptionGroup var compose: ComposeFlags
    @Option(name: [.short, .customLong("output")], help: ArgumentHelp("Write the result here instead of replacing IMAGE.", valueName: "NEW")) var output: String?

    func run() async throws {
        let (image, compose, output) = (image, compose, output)
        let console = global.makeConsole()
        try await CommandRunner.run {
            guard FS.isRegularFile(image) else { throw RootfsError("\(image) is not a file", hint: "give an initrd, tar or raw ext4 image") }
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            let specs = try await compose.specs(exports: exports)
            guard !specs.isEmpty else { throw RootfsError("nothing to add", hint: "give --overlay DIR|TAR or --file GUEST=HOST") }
            if let output {
                try FS.requireFileOutputName(output, option: "-o")
                try FS.requireParentDirectory(of: output, option: "-o")
            }
            // The result replaces IMAGE (or NEW): a symlink or special file there is refused, not replaced.
            try FS.requireReplaceableOutput(output ?? image, option: output == nil ? "IMAGE" : "-o")
            // IMAGE is read while NEW (or IMAGE itself) is written: both locked, in one order.
            let locks = try Set([FS.absolute(image), FS.absolute(output ?? image)]).sorted().map { try OutputLock(output: $0) }
            defer { withExtendedLifetime(locks) {} }
            let before = FS.fileSize(image)
            let (kind, bytes) = try await ImageExtender(epoch: try sourceDateEpoch())
                .extend(image: image, overlays: specs, output: output)
            if case .ext4 = kind, bytes > before {
                // A bare ext4 file system is grown rather than refused: say so, the size is the user's business.
                console.warning("the ext4 file system grew from \(formatBytes(before)) to \(formatBytes(bytes)) to hold the overlays")
            }
            console.info("extended \(kind.description) with \(specs.count) overlay(s)")
            console.result(try BuildOutput.file(kind: kind.name, path: output ?? image).resultLine)
        }
    }
}
