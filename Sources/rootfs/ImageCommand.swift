import ArgumentParser
import Foundation
import RootfsKit

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Write one image (any format) from a rootfs directory or tar archive.",
        discussion: """
        The format comes from --format, or from FILE's extension (.img raw, .qcow2, .vhd, .vhdx, .vmdk, .tar[.gz|.zst], \
        .initrd, .erofs, .squashfs, .iso, -efi.iso, -efi-initrd.iso, -hybrid.iso, .efi uki); raw when FILE has no \
        extension. An extension rootfs does not know, or one that disagrees with --format, is an error. For \
        kernel+initrd, FILE is a name prefix: FILE-kernel, FILE-initrd.img and FILE-cmdline are written; \
        kernel+squashfs and kernel+erofs write FILE-kernel, FILE-squashfs.img / FILE-erofs.img, FILE-cmdline.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The rootfs directory or tar archive.") var tree: String
    @Option(name: [.short, .customLong("output")], help: ArgumentHelp("The image to write.", valueName: "FILE")) var output: String
    @Option(help: ArgumentHelp("The format (\(OutputFormat.names)).", valueName: "F")) var format: String?
    @Option(help: ArgumentHelp("Initrd compression (initrd, kernel+initrd, iso-bios).", valueName: Compression.valueNames)) var compression: Compression = .zstd
    @OptionGroup var imageFlags: ImageFlags
    @OptionGroup var compose: ComposeFlags
    @Flag(name: .customLong("agent-init"), help: "Require the agent to be /sbin/init.") var agentInit = false
    @Flag(name: .customLong("no-agent-check"), help: "Write a tree with no init and no agent (an extension image such as Kata's coco, devkit or gpu ones, or a sysext; not bootable): the init and agent checks are skipped.")
    var noAgentCheck = false

    func run() async throws {
        let (tree, output, formatText, agentInit, noAgentCheck) = (tree, output, format, agentInit, noAgentCheck)
        let console = global.makeConsole()
        let flags = imageFlags, compose = compose, compression = compression
        try await CommandRunner.run {
            let explicit = try formatText.map(OutputFormat.parse)
            let format = try OutputFormat.resolve(path: output, explicit: explicit, option: "-o", fallback: .raw)
            if ![.rootfs, .oci, .containerDisk].contains(format) { try FS.requireFileOutputName(output, option: "-o") }
            var options = try flags.options(epoch: try sourceDateEpoch(), compression: compression,
                                            environment: ProcessInfo.processInfo.environment)
            if options.variant == nil, let v = ProcessInfo.processInfo.environment["BUILD_VARIANT"], !v.isEmpty {
                try VerityDisk.validateVariant(v, option: "BUILD_VARIANT")
                options.variant = v
            }
            try ImageOptions.requireVHDXFixedFits(options, formats: [format])
            try ImageOptions.requireVerityFits(options, formats: [format])
            try ImageOptions.requireBlockSizeFits(options, formats: [format])
            let exports = EngineImageExports()
            defer { exports.removeAll() }
            let tree = try await exports.resolve(tree)
            if noAgentCheck {
                guard try FS.exists(tree) || ImageReference.parse(tree) != nil else {
                    throw RootfsError("\(tree) does not exist", hint: "give a rootfs directory or a tar archive")
                }
            } else {
                try RootfsChecker.requireTreeSource(at: tree, agentInit: agentInit)
            }
            try FS.requireParentDirectory(of: output, option: "-o")
            try FormatOutput(format: format, path: FS.absolute(output)).requireReplaceable(option: "-o")
            // One writer per output at a time, as for `rootfs build`.
            let lock = try OutputLock(output: FS.absolute(output))
            defer { withExtendedLifetime(lock) {} }
            let (source, cleanup) = try TreeSource.composed(tree, overlays: try await compose.specs(exports: exports), near: FS.absolute(output))
            defer { cleanup() }
            var writer = ImageWriter(options: options)
            // What was written (the erofs size beside ext4's...), as `rootfs build` shows it.
            writer.note = { line in console.info(line) }
            for o in try await writer.write(format, source: source, to: FS.absolute(output)) {
                var o = o
                if o.sha256 == nil && FS.isRegularFile(o.path) { o.sha256 = try SHA256.hexDigest(ofFile: o.path) }
                console.result(o.resultLine)
                if let p = o.verity, let file = o.rootHashFile {
                    console.result("root hash: \(p.rootHash)  salt: \(p.salt)  (\(file))")
                }
            }
        }
    }
}
