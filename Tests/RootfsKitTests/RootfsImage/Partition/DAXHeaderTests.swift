import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Kata's DAX header (an MBR and the nvdimm driver's PFN info block in the first 2 MiB) and
/// image size steps: the structures, and disks written through `rootfs image` checked by
/// sfdisk and e2fsck. The kernel's own check of the header is the NVDIMM boot in KataProfileTests.
@Suite struct DAXHeaderTests {
    /// The 4 KiB Kata's nsdax tool writes for image_builder.sh (`nsdax IMAGE 2097152 2097152`),
    /// measured by compiling Kata's nsdax.gpl.c on this machine and hashing bytes 4096..<8192 it wrote.
    static let nsdaxInfoBlockSHA256 = "b502df4b37a7b6ba1f3c93416b77768a9f6df41ce2ec7fe46804180ca2191553"

    @Test func infoBlockIsNsdaxsAndCorruptionIsRefused() throws {
        let block = PFNInfoBlock(dataOffset: 2 << 20, alignment: 2 << 20).encoded()
        #expect(block.count == 4096)
        #expect(SHA256.hexDigest(of: block) == Self.nsdaxInfoBlockSHA256)
        let decoded = try PFNInfoBlock(decoding: block, what: "the block")
        #expect(decoded.dataOffset == 2 << 20 && decoded.alignment == 2 << 20 && decoded.mode == .ram && decoded.versionMinor == 2)
        // One flipped bit anywhere, the checksum included, is what the driver refuses too.
        for offset in [20, 56, 2000, 4090] {
            var bad = block
            bad[offset] ^= 0x01
            #expect(throws: RootfsError.self, "byte \(offset)") { try PFNInfoBlock(decoding: bad, what: "the block") }
        }
        var unsigned = block
        unsigned[0] = UInt8(ascii: "X")
        #expect(throws: RootfsError.self) { try PFNInfoBlock(decoding: unsigned, what: "the block") }
        #expect(throws: RootfsError.self) { try PFNInfoBlock(decoding: Array(block.prefix(100)), what: "the block") }

        // The header: MBR #1 points past the 2 MiB to the inner partition; the info block at 4 KiB.
        let header = try DAXHeader(innerPartitionOffset: 1 << 20, partitionBytes: 100 << 20, signature: 7, what: "d.img")
        let bytes = header.encoded()
        #expect(bytes.count == 8192 && bytes[510] == 0x55 && bytes[511] == 0xaa)
        #expect(header.mbr.partitionStartSector == 6144 && header.mbr.partitionSectors == 204800)
        #expect(Array(bytes[4096..<8192]) == block)
        #expect(DAXHeader.infoBlock(inHead: bytes, what: "d.img") != nil)
        #expect(DAXHeader.infoBlock(inHead: [UInt8](repeating: 0, count: 8192), what: "d.img") == nil)
    }

    @Test func mbrAndDAXDisksAbove2TiBAreRefused() throws {
        let twoTiB: Int64 = 2 << 40
        // A disk of exactly 2 TiB is the largest an MBR describes.
        let largest = try MBR(diskSignature: 1, partitionStart: 1 << 20, partitionBytes: twoTiB - (1 << 20), what: "a.img")
        #expect(largest.partitionSectors == UInt32.max - 2047)
        #expect(throws: RootfsError.self) {
            try MBR(diskSignature: 1, partitionStart: 1 << 20, partitionBytes: twoTiB - (1 << 20) + 512, what: "a.img")
        }
        #expect(throws: RootfsError.self) {
            try DAXHeader(innerPartitionOffset: 1 << 20, partitionBytes: twoTiB - (2 << 20), signature: 1, what: "a.img")
        }
        #expect(throws: RootfsError.self) { try MBR(diskSignature: 1, partitionStart: 1 << 20, partitionBytes: .max, what: "a.img") }
        #expect(throws: RootfsError.self) { try MBR(diskSignature: 1, partitionStart: 1 << 20, partitionBytes: 1000, what: "a.img") }
        do {
            _ = try MBR(diskSignature: 1, partitionStart: 1 << 20, partitionBytes: 3 << 40, what: "a.img")
        } catch let error as RootfsError {
            #expect(error.message.contains("an MBR partition table describes at most 2 TiB"), "\(error.message)")
        }
    }

    @Test func alignmentValuesAreCheckedAndDAXKeepsTwoMiBSteps() throws {
        for bad in ["0", "-1", "abc", "12x", "1e3", "", "99999999999999999999", "\(DiskImageWriter.maxAlignmentMiB + 1)"] {
            #expect(throws: RootfsError.self, "\(bad)") { try DiskImageWriter.alignmentMiB(parsing: bad, from: "IMAGE_SIZE_ALIGNMENT_MB") }
        }
        #expect(try DiskImageWriter.alignmentMiB(parsing: " 128 ", from: "IMAGE_SIZE_ALIGNMENT_MB") == 128)
        var writer = DiskImageWriter()
        #expect(try writer.alignmentBytes() == 1 << 20)
        writer.alignmentMiB = 3
        #expect(try writer.alignmentBytes() == 3 << 20)
        writer.dax = true
        #expect(try writer.alignmentBytes() == 6 << 20)
        writer.alignmentMiB = 128
        #expect(try writer.alignmentBytes() == 128 << 20)
        writer.alignmentMiB = 0
        #expect(throws: RootfsError.self) { try writer.alignmentBytes() }
    }
}

/// Disk images written by the CLI with `--dax` and `--align`, read back by sfdisk, sgdisk and e2fsck.
@Suite struct AlignedAndDAXImageTests {
    static let epoch = ["SOURCE_DATE_EPOCH": "1700000000"]

    /// The smallest tree the writers accept: the agent as /sbin/init.
    static func agentTree() throws -> String {
        let root = try Fixtures.temporaryDirectory("dax-tree")
        try FS.makeDirectories(root + "/usr/bin")
        try FS.makeDirectories(root + "/sbin")
        try FS.makeDirectories(root + "/etc")
        try FileManager.default.copyItem(atPath: Fixtures.agentBinary, toPath: root + "/usr/bin/rootfs-agent")
        symlink("/usr/bin/rootfs-agent", root + "/sbin/init")
        try "dax\n".write(toFile: root + "/etc/hostname", atomically: true, encoding: .utf8)
        return root
    }

    /// The partitions sfdisk reads: (start sector, sectors).
    static func partitions(_ image: String) async throws -> [(start: Int64, size: Int64)] {
        let r = try await Fixtures.run("/usr/sbin/sfdisk", ["--json", image])
        guard r.status == 0, let data = r.stdout.data(using: .utf8),
              let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let table = json["partitiontable"] as? [String: Any], let parts = table["partitions"] as? [[String: Any]] else {
            throw RootfsError("sfdisk cannot read \(image): \(r.stderr)")
        }
        return parts.map { (($0["start"] as? NSNumber)?.int64Value ?? -1, ($0["size"] as? NSNumber)?.int64Value ?? -1) }
    }

    /// e2fsck -fn on the bytes of a partition cut out of the image with dd at the offset sfdisk gave.
    static func fsck(_ image: String, start: Int64, size: Int64) async throws -> Fixtures.CLIResult {
        let part = image + ".part"
        defer { unlink(part) }
        let dd = try await Fixtures.run("/usr/bin/dd", ["if=" + image, "of=" + part, "bs=512", "skip=\(start)", "count=\(size)",
                                                        "conv=sparse", "status=none"])
        guard dd.status == 0 else { throw RootfsError("dd failed: \(dd.stderr)") }
        return try await Fixtures.run("/usr/sbin/e2fsck", ["-fn", part])
    }

    @Test func daxImageHasBothTablesAnIntactFilesystemAndWholeSteps() async throws {
        let tree = try Self.agentTree()
        let dir = try Fixtures.temporaryDirectory("dax-img")
        defer { FS.remove(tree); FS.remove(dir) }
        let image = dir + "/dax.img"
        let r = try await Fixtures.rootfs(["image", tree, "-o", image, "--dax", "--align", "128", "--agent-init"], environment: Self.epoch)
        #expect(r.status == 0, "\(r.stderr)")
        let size = FS.fileSize(image)
        #expect(size > 0 && size % (128 << 20) == 0, "\(size)")
        // MBR #1 (what virtio-blk readers see): one partition from 3 MiB to the very end.
        let outer = try await Self.partitions(image)
        #expect(outer.count == 1 && outer[0].start == 6144 && outer[0].start * 512 + outer[0].size * 512 == size, "\(outer)")
        // MBR #2 (what the DAX mapping shows from 2 MiB on): the same bytes, at 1 MiB of the inner image.
        let inner = dir + "/inner.img"
        let dd = try await Fixtures.run("/usr/bin/dd", ["if=" + image, "of=" + inner, "bs=1M", "skip=2", "conv=sparse", "status=none"])
        #expect(dd.status == 0)
        let innerParts = try await Self.partitions(inner)
        #expect(innerParts.count == 1 && innerParts[0].start == 2048 && innerParts[0].size == outer[0].size, "\(innerParts)")
        let fsck = try await Self.fsck(image, start: outer[0].start, size: outer[0].size)
        #expect(fsck.status == 0 && fsck.stdout.contains("files"), "\(fsck.stdout)\(fsck.stderr)")
        let head = try OwnedFileDescriptor(path: image, flags: O_RDONLY).read(count: 8192, at: 0)
        #expect(SHA256.hexDigest(of: Array(head[4096..<8192])) == DAXHeaderTests.nsdaxInfoBlockSHA256)
        // The same image with an odd step: still whole 2 MiB (the driver maps only a namespace ending on 2 MiB).
        let odd = dir + "/odd.img"
        let r2 = try await Fixtures.rootfs(["image", tree, "-o", odd, "--dax", "--align", "3", "--agent-init"], environment: Self.epoch)
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(FS.fileSize(odd) % (6 << 20) == 0, "\(FS.fileSize(odd))")
    }

    @Test func alignRoundsMBRGPTAndBareImagesAndTheVariableIsRead() async throws {
        let tree = try Self.agentTree()
        let dir = try Fixtures.temporaryDirectory("align-img")
        defer { FS.remove(tree); FS.remove(dir) }
        for (name, extra) in [("mbr.img", [String]()), ("gpt.img", ["--partition-table", "gpt"]), ("bare.img", ["--no-partition-table"])] {
            let r = try await Fixtures.rootfs(["image", tree, "-o", dir + "/" + name, "--align", "48", "--agent-init"] + extra, environment: Self.epoch)
            #expect(r.status == 0, "\(name): \(r.stderr)")
            #expect(FS.fileSize(dir + "/" + name) % (48 << 20) == 0, "\(name): \(FS.fileSize(dir + "/" + name))")
        }
        let mbr = try await Self.partitions(dir + "/mbr.img")
        #expect(mbr.count == 1 && mbr[0].start == 2048 && (mbr[0].start + mbr[0].size) * 512 == FS.fileSize(dir + "/mbr.img"), "\(mbr)")
        #expect(try await Self.fsck(dir + "/mbr.img", start: mbr[0].start, size: mbr[0].size).status == 0)
        let sgdisk = try await Fixtures.run("/usr/sbin/sgdisk", ["-v", dir + "/gpt.img"])
        #expect(sgdisk.stdout.contains("No problems found"), "\(sgdisk.stdout)")
        let gpt = try await Self.partitions(dir + "/gpt.img")
        #expect(try await Self.fsck(dir + "/gpt.img", start: gpt[0].start, size: gpt[0].size).status == 0)
        #expect(try await Fixtures.run("/usr/sbin/e2fsck", ["-fn", dir + "/bare.img"]).status == 0)
        // Kata's variable, for `rootfs image` too; --align wins over it.
        let env = Self.epoch.merging(["IMAGE_SIZE_ALIGNMENT_MB": "40"]) { $1 }
        #expect(try await Fixtures.rootfs(["image", tree, "-o", dir + "/env.img", "--agent-init"], environment: env).status == 0)
        #expect(FS.fileSize(dir + "/env.img") % (40 << 20) == 0, "\(FS.fileSize(dir + "/env.img"))")
        #expect(try await Fixtures.rootfs(["image", tree, "-o", dir + "/flag.img", "--align", "56", "--agent-init"], environment: env).status == 0)
        #expect(FS.fileSize(dir + "/flag.img") % (56 << 20) == 0 && FS.fileSize(dir + "/flag.img") % (40 << 20) != 0)
    }

    @Test func badStepsAndDisksAbove2TiBAreClearErrorsAndLeaveNothing() async throws {
        let tree = try Self.agentTree()
        let dir = try Fixtures.temporaryDirectory("align-bad")
        defer { FS.remove(tree); FS.remove(dir) }
        let image = dir + "/x.img"
        for (args, message) in [(["--align", "0"], "--align 0 is not an image size step"),
                                (["--align=-3"], "--align -3 is not an image size step"),
                                (["--align", "abc"], "'abc' is invalid for '--align <MiB>'"),
                                (["--align", "99999999999999999999"], "is invalid for '--align <MiB>'"),
                                (["--dax", "--skip-dax-header"], "--dax and --skip-dax-header contradict each other")] {
            let r = try await Fixtures.rootfs(["image", tree, "-o", image, "--agent-init"] + args)
            #expect(r.status != 0 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        for value in ["0", "12x", "-5"] {
            let r = try await Fixtures.rootfs(["image", tree, "-o", image, "--agent-init"], environment: ["IMAGE_SIZE_ALIGNMENT_MB": value])
            #expect(r.status != 0 && r.stderr.contains("IMAGE_SIZE_ALIGNMENT_MB '\(value)' is not an image size step in MiB"), "\(value): \(r.stderr)")
        }
        // A step just above 2 TiB: refused before the image is written, by the table that cannot describe it.
        let mbr = try await Fixtures.rootfs(["image", tree, "-o", image, "--align", "2097153", "--agent-init"])
        #expect(mbr.status != 0 && mbr.stderr.contains("more than an MBR partition table can describe (2 TiB"), "\(mbr.stderr)")
        let dax = try await Fixtures.rootfs(["image", tree, "-o", image, "--dax", "--align", "2097153", "--agent-init"])
        #expect(dax.status != 0 && dax.stderr.contains("more than Kata's DAX layout (an MBR) can describe"), "\(dax.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }
}
