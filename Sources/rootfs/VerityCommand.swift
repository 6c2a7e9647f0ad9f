import ArgumentParser
import Foundation
import RootfsKit

struct VerityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verity",
        abstract: "Write the dm-verity hash tree of an image or partition; print its root hash.",
        discussion: """
        The tree is the one `veritysetup format --no-superblock --hash=sha256 --data-block-size=4096 \
        --hash-block-size=4096 --salt=HEX DATA HASHFILE` writes (format 1): open it with \
        `veritysetup open --no-superblock DATA NAME HASHFILE ROOT --salt=HEX`. The salt is --salt, \
        else derived from SOURCE_DATE_EPOCH and the data (its size and first 64 KiB), so two builds \
        give the same root hash, else 32 random bytes as veritysetup does. DATA must be whole 4 KiB blocks.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The data: a file system image or a disk image (with --offset/--length).") var data: String
    @Option(name: [.short, .customLong("output")], help: ArgumentHelp("The hash tree file to write.", valueName: "HASHFILE")) var output: String
    @Option(help: ArgumentHelp("Salt as hex bytes, or - for none.", valueName: "HEX")) var salt: String?
    @Option(help: ArgumentHelp("Where the data starts in DATA, in bytes (a partition).", valueName: "BYTES")) var offset: Int64 = 0
    @Option(help: ArgumentHelp("How many bytes of data (default: to the end of DATA).", valueName: "BYTES")) var length: Int64?
    @Option(name: .customLong("kata-params"), help: ArgumentHelp(
        "Also write Kata's root_hash file (root_hash=…,salt=…,data_blocks=…,…).", valueName: "FILE"))
    var kataParams: String?

    func run() async throws {
        let (data, output, salt, offset, length, kataParams) = (data, output, salt, offset, length, kataParams)
        let console = global.makeConsole()
        try await CommandRunner.run {
            guard FS.isRegularFile(data) else { throw RootfsError("\(data) is not a regular file") }
            try FS.requireFileOutputName(output, option: "-o")
            try FS.requireParentDirectory(of: output, option: "-o")
            if let kataParams { try FS.requireParentDirectory(of: kataParams, option: "--kata-params") }
            let saltBytes: [UInt8]
            if let salt {
                saltBytes = try VerityHashTree.parseSalt(salt)
            } else if let epoch = try sourceDateEpoch() {
                saltBytes = VerityHashTree.derivedSalt(epoch: epoch, identity: try VerityHashTree.dataIdentity(path: data, offset: offset, length: length))
            } else {
                saltBytes = (0..<32).map { _ in UInt8.random(in: 0 ... 255) }
            }
            let p = try VerityHashTree.write(data: data, offset: offset, length: length, to: output, salt: saltBytes)
            if let kataParams { try VerityHashTree.writeKataParameters(p, to: kataParams) }
            console.info("salt \(p.salt), \(p.dataBlocks) data blocks, tree \(p.hashSize) bytes: \(output)")
            print(p.rootHash)
        }
    }
}
