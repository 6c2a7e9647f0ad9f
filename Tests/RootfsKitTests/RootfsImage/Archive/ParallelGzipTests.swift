import CArchive
import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The parallel gzip writer: one gzip member whatever the number of workers, read back
/// by gzip(1), cpio(1) and libarchive.
@Suite struct ParallelGzipTests {
    /// A tree larger than a batch of 4 blocks, half compressible text and half random bytes,
    /// so that blocks deflate to very different sizes and finish out of order.
    static func makeMixedTree() throws -> String {
        let root = try makeSampleTree()
        try ToolCommandSync.run(["dd", "if=/dev/urandom", "of=\(root)/usr/bin/random", "bs=1M", "count=3", "status=none"])
        let text = (0..<60_000).map { "line \($0): the quick brown fox \($0 % 97)\n" }.joined()
        try text.write(toFile: root + "/etc/text", atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(atPath: Fixtures.agentBinary, toPath: root + "/usr/bin/rootfs-agent")
        return root
    }

    @Test func sameBytesWithOneAndFourWorkersAndGzipAndCpioReadIt() async throws {
        let root = try Self.makeMixedTree()
        let out = try Fixtures.temporaryDirectory("pgz")
        defer { FS.remove(root); FS.remove(out) }
        var outputs: [Data] = []
        for workers in [1, 4, 3] {
            var writer = InitrdWriter(compression: .gzip, epoch: 1_000_000)
            writer.gzipWorkers = workers
            try writer.write(tree: root, to: out + "/w\(workers).gz")
            outputs.append(try #require(FileManager.default.contents(atPath: out + "/w\(workers).gz")))
        }
        #expect(outputs[0].count > 2 * ParallelGzip.blockSize / 2, "several blocks were written")
        #expect(outputs[0] == outputs[1], "1 and 4 workers")
        #expect(outputs[0] == outputs[2], "1 and 3 workers (a partial last batch)")
        // gzip -t checks the deflate stream, the CRC-32 and ISIZE.
        let test = try await ProcessRunner().capture(ToolCommand("gzip", ["-t", out + "/w4.gz"]))
        #expect(test.standardError.isEmpty)
        // The inflated stream is exactly the uncompressed cpio of the same tree.
        try InitrdWriter(compression: .none, epoch: 1_000_000).write(tree: root, to: out + "/plain.cpio")
        try ToolCommandSync.run(["sh", "-c", "gzip -dc \"$1\" > \"$2\"", "sh", out + "/w4.gz", out + "/inflated.cpio"])
        #expect(FileManager.default.contents(atPath: out + "/inflated.cpio") == FileManager.default.contents(atPath: out + "/plain.cpio"))
        // cpio(1) lists it, and so does libarchive.
        let listed = try await ProcessRunner().capture(ToolCommand("sh", ["-c", "gzip -dc \"$1\" | cpio -it --quiet", "sh", out + "/w4.gz"]))
        let names = listed.standardOutput.split(separator: "\n").map(String.init)
        let entries = try ArchiveReader.list(out + "/w4.gz")
        // (The sample tree's name with a newline in it is two lines of cpio's listing.)
        for entry in entries where !entry.path.contains("\n") { #expect(names.contains(entry.path), "\(entry.path)") }
        #expect(names.contains("usr/bin/random") && names.contains("init"))
        #expect(entries.first { $0.path == "usr/bin/random" }?.size == 3 << 20)
    }

    /// Block edges: nothing, one byte, exactly one block, one block and a byte, a full batch.
    @Test(arguments: [0, 1, ParallelGzip.blockSize, ParallelGzip.blockSize + 1, 3 * ParallelGzip.blockSize])
    func edgesInflateToTheInput(size: Int) async throws {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<size).map { i in i % 3 == 0 ? UInt8.random(in: 0...255, using: &generator) : UInt8(i % 7) }
        let one = try ParallelGzip(workers: 1).compress(data)
        let three = try ParallelGzip(workers: 3).compress(data)
        #expect(one == three)
        let dir = try Fixtures.temporaryDirectory("pgz-edge"); defer { FS.remove(dir) }
        try Data(one).write(to: URL(fileURLWithPath: dir + "/x.gz"))
        try ToolCommandSync.run(["sh", "-c", "gzip -dc \"$1\" > \"$2\"", "sh", dir + "/x.gz", dir + "/x"])
        #expect(FileManager.default.contents(atPath: dir + "/x") == Data(data))
    }

    /// Through the CLI: `rootfs initrd --compression gzip`, checked by gzip -t, and no larger
    /// than gzip -6 of the same cpio stream (the blocks cost a little ratio; not more).
    @Test func cliInitrdIsCleanAndNoLargerThanGzip6() async throws {
        let root = try Self.makeMixedTree()
        let out = try Fixtures.temporaryDirectory("pgz-cli")
        defer { FS.remove(root); FS.remove(out) }
        let r = try await Fixtures.rootfs(["initrd", "-q", "--compression", "gzip", root, "-o", out + "/x.initrd"],
                                          environment: ["SOURCE_DATE_EPOCH": "1000000"])
        #expect(r.status == 0, "\(r.stderr)")
        try ToolCommandSync.run(["gzip", "-t", out + "/x.initrd"])
        try ToolCommandSync.run(["sh", "-c", "gzip -dc \"$1\" | gzip -6 -n > \"$2\"", "sh", out + "/x.initrd", out + "/gzip6"])
        let ours = FS.fileSize(out + "/x.initrd"), theirs = FS.fileSize(out + "/gzip6")
        #expect(ours <= theirs, "ours \(ours) bytes, gzip -6 \(theirs) bytes")
    }

    /// DeflateBlockWalker on libdeflate's own output: stored blocks (random bytes), static
    /// Huffman blocks (a few bytes), dynamic blocks (text, runs) at libdeflate's fastest,
    /// default and slowest levels. Every piece but the last is made continuable and the pieces
    /// are joined into one gzip member that gzip(1) must inflate to the inputs laid end to end.
    @Test(arguments: [1, ParallelGzip.defaultLevel, 12])
    func continuablePiecesJoinIntoOneStream(level: Int) async throws {
        var generator = SystemRandomNumberGenerator()
        let text = (0..<40_000).map { "entry \($0 % 1013) of the walk \($0 * 7919 % 65_521)\n" }.joined()
        let inputs: [[UInt8]] = [
            (0..<300_000).map { _ in UInt8.random(in: 0...255, using: &generator) },
            Array("tiny".utf8),
            Array(text.utf8),
            [UInt8](repeating: 0x41, count: 200_000),
            [],
            (0..<70_000).map { i in i % 5 == 0 ? UInt8.random(in: 0...255, using: &generator) : UInt8(i % 11) },
            Array("the last, final piece".utf8),
        ]
        let compressor = try ParallelGzip.Compressor(level: Int32(level))
        var member = ParallelGzip.header
        for (index, input) in inputs.enumerated() {
            let final = index == inputs.count - 1
            let (piece, _) = try input.withUnsafeBytes { try ParallelGzip.deflateBlock($0, compressor: compressor, final: final).get() }
            member += piece
        }
        let whole = inputs.flatMap { $0 }
        let crc = UInt32(whole.withUnsafeBufferPointer { crc32(0, $0.baseAddress, uInt($0.count)) })
        for value in [crc, UInt32(whole.count)] { for shift in stride(from: 0, to: 32, by: 8) { member.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) } }
        let dir = try Fixtures.temporaryDirectory("pgz-walk"); defer { FS.remove(dir) }
        try Data(member).write(to: URL(fileURLWithPath: dir + "/x.gz"))
        try ToolCommandSync.run(["gzip", "-t", dir + "/x.gz"])
        try ToolCommandSync.run(["sh", "-c", "gzip -dc \"$1\" > \"$2\"", "sh", dir + "/x.gz", dir + "/x"])
        #expect(FileManager.default.contents(atPath: dir + "/x") == Data(whole))
    }

    /// A stream cut short, with bytes after its end, or not deflate at all: an error, never a
    /// wrong position (the walk would then corrupt the initrd) and never a crash.
    @Test func walkerRefusesWhatIsNotOneWholeStream() throws {
        let text = Array((0..<20_000).map { "line \($0)\n" }.joined().utf8)
        let compressor = try ParallelGzip.Compressor(level: 6)
        let (piece, _) = try text.withUnsafeBytes { try ParallelGzip.deflateBlock($0, compressor: compressor, final: true).get() }
        let ends = try piece.withUnsafeBytes { try DeflateBlockWalker.walk($0) }
        #expect((ends.endBit + 7) / 8 == piece.count)
        #expect(ends.finalHeaderBit < ends.endBit)
        #expect(piece[ends.finalHeaderBit / 8] & (1 << UInt8(ends.finalHeaderBit % 8)) != 0, "the final block's BFINAL bit is set")
        for cut in [1, piece.count / 2, piece.count - 1] {
            #expect(throws: RootfsError.self, "cut to \(cut) bytes") {
                try Array(piece.prefix(cut)).withUnsafeBytes { _ = try DeflateBlockWalker.walk($0) }
            }
        }
        #expect(throws: RootfsError.self) { try (piece + [0]).withUnsafeBytes { _ = try DeflateBlockWalker.walk($0) } }
        // Block type 3 (reserved) in the first header.
        #expect(throws: RootfsError.self) { try [UInt8]([0x07, 0, 0, 0]).withUnsafeBytes { _ = try DeflateBlockWalker.walk($0) } }
        // A stored block whose NLEN is not LEN's complement.
        #expect(throws: RootfsError.self) { try [UInt8]([0x01, 0x05, 0x00, 0x00, 0x00]).withUnsafeBytes { _ = try DeflateBlockWalker.walk($0) } }
    }
}
