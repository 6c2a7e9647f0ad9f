import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// qemu-img, a second implementation, run on what our writers wrote.
private func qemuImg(_ args: [String]) async throws -> Fixtures.CLIResult {
    try await Fixtures.run(try #require(ProcessRunner.which("qemu-img"), "qemu-img is needed (apt-get install qemu-utils)"), args)
}

private func virtualSize(_ path: String, format: String) async throws -> UInt64? {
    let r = try await qemuImg(["info", "--output=json", "-f", format, path])
    let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    return (json?["virtual-size"] as? NSNumber)?.uint64Value
}

/// A raw disk with data and holes: a random first MiB, zeros, a random block at 10 MiB,
/// a few bytes in the middle of a 2 MiB block, and data in the last sectors.
private func makeDisk(_ path: String, size: Int, seed: UInt64) throws -> [UInt8] {
    var gen = TestBytes(seed: seed)
    var disk = [UInt8](repeating: 0, count: size)
    disk.replaceSubrange(0..<(1 << 20), with: gen.bytes(1 << 20))
    disk.replaceSubrange((10 << 20)..<((10 << 20) + 300_000), with: gen.bytes(300_000))
    disk.replaceSubrange((17 << 20) + 4097..<((17 << 20) + 4100), with: [1, 2, 3])
    disk.replaceSubrange((size - 1000)..<size, with: gen.bytes(1000))
    try writeFile(path, disk)
    return disk
}

@Suite(.requires(.qemuImg), .tags(.qemuImg)) struct VirtualDiskWriterTests {
    static let epoch = 1_700_000_000

    @Test(arguments: [VHDXWriter.Kind.dynamic, .fixed])
    func vhdxIsCleanAndConvertsBackByteForByte(kind: VHDXWriter.Kind) async throws {
        let dir = try Fixtures.temporaryDirectory("vhdx"); defer { FS.remove(dir) }
        let size = (40 << 20) + 3 * 512
        _ = try makeDisk(dir + "/disk.raw", size: size, seed: 5)
        let stats = try VHDXWriter(kind: kind, epoch: Self.epoch).write(rawDisk: dir + "/disk.raw", to: dir + "/d.vhdx")
        #expect(stats.virtualSize == UInt64(size) && stats.paddedBytes == 0)
        #expect(stats.blocks == 41 && stats.blockSize == 1 << 20)
        // Blocks 0, 10, 17 and 40 hold data; a dynamic disk stores only those.
        #expect(stats.storedBlocks == (kind == .dynamic ? 4 : 41))

        let check = try await qemuImg(["check", "-f", "vhdx", dir + "/d.vhdx"])
        #expect(check.status == 0 && check.stdout.contains("No errors were found"), "\(check.stdout) \(check.stderr)")
        #expect(try await virtualSize(dir + "/d.vhdx", format: "vhdx") == UInt64(size))
        let back = try await qemuImg(["convert", "-f", "vhdx", "-O", "raw", dir + "/d.vhdx", dir + "/back.raw"])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(try fileBytes(dir + "/back.raw") == fileBytes(dir + "/disk.raw"))
        #expect(FS.fileSize(dir + "/d.vhdx") == stats.outputBytes)
        if kind == .dynamic { #expect(stats.outputBytes < Int64(size) / 4) }

        // Reproducible: the same bytes again with the same epoch, other GUIDs with another.
        _ = try VHDXWriter(kind: kind, epoch: Self.epoch).write(rawDisk: dir + "/disk.raw", to: dir + "/again.vhdx")
        #expect(try fileBytes(dir + "/d.vhdx") == fileBytes(dir + "/again.vhdx"))
        _ = try VHDXWriter(kind: kind, epoch: Self.epoch + 1).write(rawDisk: dir + "/disk.raw", to: dir + "/other.vhdx")
        #expect(try fileBytes(dir + "/d.vhdx") != fileBytes(dir + "/other.vhdx"))
    }

    /// A bare file system whose size is not whole sectors is padded with zeros to the next sector.
    @Test func vhdxPadsToWholeSectors() async throws {
        let dir = try Fixtures.temporaryDirectory("vhdx-pad"); defer { FS.remove(dir) }
        var gen = TestBytes(seed: 9)
        let data = gen.bytes(3 << 20 + 100)
        try writeFile(dir + "/fs.img", data)
        let stats = try VHDXWriter(epoch: Self.epoch).write(rawDisk: dir + "/fs.img", to: dir + "/fs.vhdx")
        #expect(stats.virtualSize == UInt64(3 << 20 + 512) && stats.paddedBytes == 412)
        #expect(try await qemuImg(["check", "-f", "vhdx", dir + "/fs.vhdx"]).status == 0)
        #expect(try await virtualSize(dir + "/fs.vhdx", format: "vhdx") == stats.virtualSize)
        _ = try await qemuImg(["convert", "-f", "vhdx", "-O", "raw", dir + "/fs.vhdx", dir + "/back.raw"])
        #expect(try fileBytes(dir + "/back.raw") == data + [UInt8](repeating: 0, count: 412))

        let vhd = try DynamicVHDWriter(epoch: Self.epoch).write(rawDisk: dir + "/fs.img", to: dir + "/fs.vhd")
        #expect(vhd.virtualSize == stats.virtualSize && vhd.paddedBytes == 412)
        #expect(try await virtualSize(dir + "/fs.vhd", format: "vpc") == stats.virtualSize)
        _ = try await qemuImg(["convert", "-f", "vpc", "-O", "raw", dir + "/fs.vhd", dir + "/back-vhd.raw"])
        #expect(try fileBytes(dir + "/back-vhd.raw") == data + [UInt8](repeating: 0, count: 412))
    }

    /// Past 4 GiB (4096 blocks of 1 MiB) the BAT holds a sector bitmap entry between payload
    /// entries: data on both sides of it must come back where it was (sparse input, qemu-img compare).
    @Test func vhdxPastTheFirstSectorBitmapChunk() async throws {
        let dir = try Fixtures.temporaryDirectory("vhdx-big"); defer { FS.remove(dir) }
        let size = Int64(5) << 30
        var gen = TestBytes(seed: 21)
        var disk = try OwnedFileDescriptor(path: dir + "/disk.raw", flags: O_CREAT | O_WRONLY, mode: 0o644)
        #expect(ftruncate(disk.raw, off_t(size)) == 0)
        let offsets: [Int64] = [0, (4095 << 20) + 5, 4096 << 20, (4097 << 20) + 77, size - 4096]
        for offset in offsets {
            try disk.writeAll(gen.bytes(4096), at: offset)
        }
        try disk.close()
        let stats = try VHDXWriter(epoch: Self.epoch).write(rawDisk: dir + "/disk.raw", to: dir + "/d.vhdx")
        #expect(stats.blocks == 5120 && stats.storedBlocks == 5)
        let check = try await qemuImg(["check", "-f", "vhdx", dir + "/d.vhdx"])
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
        let compare = try await qemuImg(["compare", "-f", "vhdx", "-F", "raw", dir + "/d.vhdx", dir + "/disk.raw"])
        #expect(compare.status == 0 && compare.stdout.contains("Images are identical"), "\(compare.stdout) \(compare.stderr)")
    }

    /// The identity's fast hash is the real XXH64: values from xxhsum -H64 (Debian's xxhash 0.8).
    @Test func xxh64MatchesXxhsum() {
        let pattern = (0..<1_000_003).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ ($0 >> 8)) }
        #expect(XXH64.hash([]) == 0xEF46_DB37_51D8_E999)
        #expect(XXH64.hash(Array("abc".utf8)) == 0x44BC_2CF5_AD77_0999)
        #expect(XXH64.hash(Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)) == 0x64F2_3ECF_1609_B766)
        #expect(XXH64.hash(Array(pattern.prefix(37))) == 0xA769_A6BA_F5F8_C928)
        #expect(XXH64.hash(pattern) == 0xFB15_A1AD_2BD9_A2DF)
    }

    @Test func vhdxLayoutLimits() throws {
        // 64 TiB is the largest VHDX: the block size grows so the BAT stays at 2^20 blocks.
        let largest = try VHDXWriter.Layout(virtualSize: 64 << 40, blockSize: nil)
        #expect(largest.blockSize == 64 << 20 && largest.payloadBlocks == 1 << 20)
        #expect(largest.batLength <= 9 << 20)
        #expect(throws: RootfsError.self) { try VHDXWriter.Layout(virtualSize: (64 << 40) + 512, blockSize: nil) }
        #expect(throws: RootfsError.self) { try VHDXWriter.Layout(virtualSize: .max - 511, blockSize: nil) }
        #expect(throws: RootfsError.self) { try VHDXWriter.Layout(virtualSize: 1000, blockSize: nil) }
        #expect(throws: RootfsError.self) { try VHDXWriter.Layout(virtualSize: 1 << 20, blockSize: 3 << 20) }
        // A sector bitmap entry after every chunk-ratio payload entries (4096 for 1 MiB blocks).
        let l = try VHDXWriter.Layout(virtualSize: 5000 << 20, blockSize: 1 << 20)
        #expect(l.chunkRatio == 4096 && l.batEntries == 5001 && l.batIndex(ofBlock: 4096) == 4097)
    }

    @Test func emptyAndTooLargeInputsAreRefused() throws {
        let dir = try Fixtures.temporaryDirectory("vdisk-bad"); defer { FS.remove(dir) }
        _ = FileManager.default.createFile(atPath: dir + "/empty", contents: nil)
        #expect { try VHDXWriter().write(rawDisk: dir + "/empty", to: dir + "/x.vhdx") } throws: {
            ($0 as? RootfsError)?.message.contains("is empty") == true
        }
        // A sparse 3 TiB disk: more than a VHD holds.
        let fd = open(dir + "/huge", O_CREAT | O_WRONLY, 0o644)
        #expect(fd >= 0 && ftruncate(fd, off_t(3) << 40) == 0)
        close(fd)
        #expect { try DynamicVHDWriter().write(rawDisk: dir + "/huge", to: dir + "/x.vhd") } throws: {
            ($0 as? RootfsError)?.message.contains("at most 2040 GiB") == true
        }
        #expect(!FS.exists(dir + "/x.vhd") && !FS.exists(dir + "/x.vhdx"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["empty", "huge"])
    }

    @Test func dynamicVHDConvertsBackByteForByte() async throws {
        let dir = try Fixtures.temporaryDirectory("vhd"); defer { FS.remove(dir) }
        let size = (21 << 20) + 7 * 512
        _ = try makeDisk(dir + "/disk.raw", size: size, seed: 13)
        let stats = try DynamicVHDWriter(epoch: Self.epoch).write(rawDisk: dir + "/disk.raw", to: dir + "/d.vhd")
        #expect(stats.blocks == 11 && stats.storedBlocks == 4)  // 2 MiB blocks 0, 5, 8 and 10
        #expect(FS.fileSize(dir + "/d.vhd") == stats.outputBytes)
        #expect(try await virtualSize(dir + "/d.vhd", format: "vpc") == UInt64(size))
        let back = try await qemuImg(["convert", "-f", "vpc", "-O", "raw", dir + "/d.vhd", dir + "/back.raw"])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(try fileBytes(dir + "/back.raw") == fileBytes(dir + "/disk.raw"))

        // The footer at the start and at the end are the same, with a valid checksum and the epoch's time stamp.
        let bytes = try fileBytes(dir + "/d.vhd")
        let head = Array(bytes[0..<512]), foot = Array(bytes[(bytes.count - 512)...])
        #expect(head == foot)
        let d = BinaryDecoder(foot, order: .big, what: "the footer")
        #expect(try d.bytes(at: 0, count: 8) == Array("conectix".utf8))
        #expect(try d.u32(60) == 3 && d.u64(48) == UInt64(size))
        #expect(try d.u32(24) == UInt32(Self.epoch - 946_684_800))
        var zeroed = foot
        zeroed.replaceSubrange(64..<68, with: [0, 0, 0, 0])
        #expect(try d.u32(64) == ~zeroed.reduce(UInt32(0)) { $0 &+ UInt32($1) })

        _ = try DynamicVHDWriter(epoch: Self.epoch).write(rawDisk: dir + "/disk.raw", to: dir + "/again.vhd")
        #expect(try fileBytes(dir + "/again.vhd") == bytes)
    }

    /// qemu-img's own dynamic VHD of the same disk reads back the same (a third opinion on ours).
    @Test func dynamicVHDMatchesQemuImgsContent() async throws {
        let dir = try Fixtures.temporaryDirectory("vhd-qemu"); defer { FS.remove(dir) }
        _ = try makeDisk(dir + "/disk.raw", size: 24 << 20, seed: 17)
        _ = try DynamicVHDWriter(epoch: Self.epoch).write(rawDisk: dir + "/disk.raw", to: dir + "/ours.vhd")
        let compare = try await qemuImg(["compare", "-f", "vpc", "-F", "raw", dir + "/ours.vhd", dir + "/disk.raw"])
        #expect(compare.status == 0 && compare.stdout.contains("Images are identical"), "\(compare.stdout) \(compare.stderr)")
    }
}
