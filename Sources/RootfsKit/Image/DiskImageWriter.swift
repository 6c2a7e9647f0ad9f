import Foundation

/// A partition table entry of a raw disk image.
public struct MBR: Sendable, Equatable {
    public var diskSignature: UInt32
    public var partitionStartSector: UInt32
    public var partitionSectors: UInt32
    public var partitionType: UInt8 = 0x83

    /// The 512-byte sector 0: no boot code, one primary partition, the signature.
    public var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: 512)
        func put32(_ v: UInt32, at o: Int) { for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
        put32(diskSignature, at: 440)
        let p = 446
        b[p] = 0x80                       // active
        b[p + 1] = 0xfe; b[p + 2] = 0xff; b[p + 3] = 0xff  // CHS start: use LBA
        b[p + 4] = partitionType
        b[p + 5] = 0xfe; b[p + 6] = 0xff; b[p + 7] = 0xff  // CHS end: use LBA
        put32(partitionStartSector, at: p + 8)
        put32(partitionSectors, at: p + 12)
        b[510] = 0x55; b[511] = 0xaa
        return b
    }
}

/// Kata's image_builder.sh without root, loop devices or retries: a raw disk
/// with an MBR and one ext4 partition at 1 MiB, filled by `mke2fs -d` straight
/// into the image file, sized in one pass from the tree.
public struct DiskImageWriter: Sendable {
    public static let partitionOffset: Int64 = 1 << 20
    public var freeSpaceMiB: Int
    public var label: String
    public var epoch: Int?
    public var runner = ProcessRunner()

    public init(freeSpaceMiB: Int = 64, label: String = "rootfs", epoch: Int? = nil) {
        self.freeSpaceMiB = freeSpaceMiB
        self.label = label
        self.epoch = epoch
    }

    /// The space a tree needs in ext4 with 4 KiB blocks.
    public struct Sizing: Sendable, Equatable {
        public var dataBytes: Int64
        public var inodes: Int
        public var filesystemBytes: Int64
        public var journalMiB: Int
    }

    public func sizing(tree root: String) throws -> Sizing {
        var data: Int64 = 0
        var inodes = 0
        var seen = Set<HardLinkKey>()
        try TreeWalker(root: root).walk { item in
            let st = item.stat
            if item.fileType != S_IFDIR && st.st_nlink > 1 {
                guard seen.insert(HardLinkKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))).inserted else { return }
            }
            inodes += 1
            switch item.fileType {
            case S_IFREG: data += roundUp(Int64(st.st_size), 4096) + (st.st_size > 4096 * 1024 ? 4096 : 0)
            case S_IFDIR: data += max(4096, roundUp(Int64(st.st_size), 4096))
            case S_IFLNK: data += (item.linkTarget?.count ?? 0) >= 60 ? 4096 : 0
            default: break
            }
        }
        let free = Int64(freeSpaceMiB) << 20
        let inodeCount = max(4096, inodes + inodes / 5 + Int(free / 16384))
        let journalMiB = data + free < 512 << 20 ? 8 : 32
        // Inode tables, bitmaps and group descriptors, plus a margin for directory growth.
        let metadata = Int64(inodeCount) * 256 + (data + free) / 32 + (8 << 20)
        let total = data + free + metadata + Int64(journalMiB) << 20
        return Sizing(dataBytes: data, inodes: inodeCount, filesystemBytes: roundUp(total, 1 << 20), journalMiB: journalMiB)
    }

    /// The mke2fs command that writes the file system into `image` at the partition offset.
    public func mke2fsCommand(tree root: String, image: String, sizing: Sizing, uuid: String) -> ToolCommand {
        var env: [String: String] = [:]
        if let epoch { env["E2FSPROGS_FAKE_TIME"] = String(epoch) }
        return ToolCommand("mke2fs", [
            "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-L", label, "-U", uuid,
            "-N", String(sizing.inodes), "-J", "size=\(sizing.journalMiB)",
            "-E", "offset=\(Self.partitionOffset),hash_seed=\(uuid),root_owner=0:0",
            "-d", root, image, "\(sizing.filesystemBytes / 1024)k",
        ], environment: env)
    }

    /// The file system UUID: derived from SOURCE_DATE_EPOCH and the label when
    /// set (reproducible), random otherwise.
    public func filesystemUUID() -> String {
        var bytes: [UInt8]
        if let epoch {
            var hasher = SHA256()
            hasher.update(Array("rootfs-ext4:\(label):\(epoch)".utf8))
            bytes = Array(hasher.finalize().prefix(16))
        } else {
            bytes = (0..<16).map { _ in UInt8.random(in: 0 ... 255) }
        }
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        let h = SHA256.hex(bytes)
        let c = Array(h)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }

    @discardableResult
    public func write(tree root: String, to output: String) async throws -> (stats: WriteStats, uuid: String) {
        let sizing = try sizing(tree: root)
        let uuid = filesystemUUID()
        let temporary = FS.siblingTemporaryPath(for: output)
        var keep = false
        defer { if !keep { unlink(temporary) } }
        let total = Self.partitionOffset + sizing.filesystemBytes
        let fd = open(temporary, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RootfsError("cannot create \(output): \(FS.errnoText())") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(total)) == 0 else { throw RootfsError("cannot size \(output): \(FS.errnoText())") }
        do {
            try await runner.capture(mke2fsCommand(tree: root, image: temporary, sizing: sizing, uuid: uuid))
        } catch let failure as ToolFailure {
            throw RootfsError("mke2fs could not write the file system of \(output) (\(failure.status))",
                              hint: failure.outputTail.contains { $0.contains("No space") || $0.contains("Could not allocate") }
                                ? "the tree did not fit in the computed size; add room with --free-space MB" : nil,
                              details: failure.outputTail)
        }
        let signatureSource = uuid.replacingOccurrences(of: "-", with: "").prefix(8)
        let mbr = MBR(diskSignature: UInt32(signatureSource, radix: 16) ?? 0,
                      partitionStartSector: UInt32(Self.partitionOffset / 512),
                      partitionSectors: UInt32(sizing.filesystemBytes / 512))
        let written = mbr.bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, 512, 0) }
        guard written == 512, fsync(fd) == 0 else { throw RootfsError("cannot write \(output): \(FS.errnoText())") }
        try FS.rename(temporary, to: output)
        keep = true
        var stats = WriteStats()
        stats.inputBytes = sizing.dataBytes
        stats.outputBytes = total
        return (stats, uuid)
    }
}

func roundUp(_ value: Int64, _ unit: Int64) -> Int64 { (value + unit - 1) / unit * unit }
