import RootfsSupport
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
/// with an MBR and one ext4 partition at 1 MiB, written straight into the image
/// file by the native Ext4Writer (or `mke2fs -d`), sized from the tree.
public struct DiskImageWriter: Sendable {
    public static let partitionOffset: Int64 = 1 << 20
    public var freeSpaceMiB: Int
    public var label: String
    public var epoch: Int?
    public var runner = ProcessRunner()
    public var partitionTable: PartitionTable = .mbr
    public var filesystem: FilesystemType = .ext4
    /// Prepend Kata's 2 MiB NVDIMM/DAX header.
    public var dax = false
    /// Which program writes ext4: rootfs's own writer (default) or `mke2fs -d`.
    public var ext4Writer: Ext4WriterKind = .native
    /// The file system's block size (`--block-size`, Kata's BLOCK_SIZE).
    public var blockSize = 4096
    /// What mkfs.erofs compresses with (`--erofs-compression`).
    public var erofsCompression: ErofsCompression = .lz4hc
    /// One line for the user about the file system written (erofs: its size beside ext4's).
    public var note: (@Sendable (String) -> Void)?

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
    public func mke2fsCommand(tree root: String, image: String, sizing: Sizing, uuid: String,
                              offset: Int64 = DiskImageWriter.partitionOffset) -> ToolCommand {
        var env: [String: String] = [:]
        if let epoch { env["E2FSPROGS_FAKE_TIME"] = String(epoch) }
        return ToolCommand("mke2fs", [
            "-q", "-F", "-t", "ext4", "-b", String(blockSize), "-m", "0", "-L", label, "-U", uuid,
            "-N", String(sizing.inodes), "-J", "size=\(sizing.journalMiB)",
            "-E", "offset=\(offset),hash_seed=\(uuid),root_owner=0:0",
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
        try await write(source: .directory(root), to: output)
    }

    /// Where the file system starts in the output (after the DAX header and the partition table gap).
    public var filesystemOffset: Int64 {
        (dax ? DAXHeader.size : 0) + (partitionTable == .none ? 0 : Self.partitionOffset)
    }

    @discardableResult
    public func write(source: TreeSource, to output: String) async throws -> (stats: WriteStats, uuid: String) {
        if dax && partitionTable != .mbr {
            throw RootfsError("--dax needs an MBR partition table (Kata's NVDIMM layout)",
                              hint: "drop --partition-table gpt / --no-partition-table, or drop --dax")
        }
        try filesystem.requireBlockSize(blockSize)
        let fsWriter = filesystem.writer(ext4: ext4Writer, blockSize: blockSize)
        let root: String
        let cleanup: @Sendable () -> Void
        if fsWriter.readsDirectory {
            (root, cleanup) = try source.materialized(near: output)
        } else {
            (root, cleanup) = (source.path, {})
        }
        defer { cleanup() }
        let uuid = filesystemUUID()
        let temporary = FS.siblingTemporaryPath(for: output)
        var keep = false
        defer { if !keep { unlink(temporary) } }
        let fd = open(temporary, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RootfsError("cannot create \(output): \(FS.errnoText())") }
        defer { close(fd) }
        let base = filesystemOffset
        let tail: Int64 = partitionTable == .gpt ? Self.partitionOffset : 0
        var stats = WriteStats()
        let target = FilesystemTarget(source: source, directory: root, fd: fd, image: temporary, offset: base,
                                      tail: tail, output: output, uuid: uuid)
        let written = try await fsWriter.write(into: target, disk: self)
        let filesystemBytes = written.filesystemBytes
        stats.inputBytes = written.inputBytes
        let signatureSource = uuid.replacingOccurrences(of: "-", with: "").prefix(8)
        let signature = UInt32(signatureSource, radix: 16) ?? 0
        let diskStart = dax ? DAXHeader.size : 0
        switch partitionTable {
        case .mbr:
            let mbr = MBR(diskSignature: signature, partitionStartSector: UInt32(Self.partitionOffset / 512),
                          partitionSectors: UInt32(filesystemBytes / 512))
            try FS.write(mbr.bytes, to: fd, at: diskStart, name: output)
            if dax {
                try FS.write(DAXHeader.header(innerPartitionOffset: Self.partitionOffset, partitionBytes: filesystemBytes,
                                              signature: signature), to: fd, at: 0, name: output)
            }
        case .gpt:
            let sectors = UInt64((Self.partitionOffset + filesystemBytes + tail) / 512)
            let gpt = GPT(diskSectors: sectors, firstSector: UInt64(Self.partitionOffset / 512),
                          lastSector: UInt64((Self.partitionOffset + filesystemBytes) / 512) - 1,
                          diskGUID: derivedGUID("disk", uuid), partitionGUID: derivedGUID("part", uuid), partitionName: label)
            for (lba, bytes) in gpt.sectors { try FS.write(bytes, to: fd, at: Int64(lba) * 512, name: output) }
        case .none:
            break
        }
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
        keep = true
        stats.outputBytes = base + filesystemBytes + tail
        return (stats, uuid)
    }

    /// Formats whose tools read only a directory cannot keep a tar's owners
    /// when an ordinary user extracted it: refused, with the way around.
    static func refuseLosingOwnership(_ source: TreeSource, format: String, _ loses: Bool) throws {
        guard loses else { return }
        throw RootfsError("\(format) from \(source) needs root: an ordinary user cannot give the extracted files their owners (root:shadow, setuid root...), so the image would be wrong",
                          hint: "run this step as root (sudo rootfs image ...), or write a format that keeps the tar's owners without root: tar, initrd, erofs, raw/qcow2/vhd/vmdk with --fs ext4, erofs or xfs")
    }

    /// Whether owners and modes must be set from the source after mke2fs: an
    /// archive or ext4 image extracted by an ordinary user lost them (and its device nodes).
    func ownershipFromSource(_ source: TreeSource) -> Bool {
        switch source {
        case .archive, .ext4, .image: return geteuid() != 0
        case .directory: return false
        }
    }

    private func derivedGUID(_ what: String, _ uuid: String) -> String {
        var hasher = SHA256()
        hasher.update(Array("rootfs-gpt:\(what):\(uuid)".utf8))
        var bytes = Array(hasher.finalize().prefix(16))
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        let c = Array(SHA256.hex(bytes))
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }
}

/// The partition table of a raw disk image.
public enum PartitionTable: String, Sendable, CaseIterable, Codable {
    case mbr, gpt, none
}

/// The file system of a raw disk image. Only file systems with a writer
/// (DiskFilesystems.swift) are cases, so `--fs` offers nothing it refuses.
public enum FilesystemType: String, Sendable, CaseIterable, Codable {
    case ext4, erofs
    /// By mkfs.xfs from a protofile we write (XfsProtofile.swift): owners from the source, no root, no loop device.
    case xfs

    /// The block sizes (`--block-size`) each file system can be written with.
    public var blockSizes: [Int] {
        switch self {
        case .ext4, .xfs: return [1024, 2048, 4096]
        // mkfs.erofs 1.5 has no block size option: it uses the page size (4096 on x86-64 and
        // arm64), and Kata's image_builder.sh refuses any other ("Invalid block size for erofs").
        case .erofs: return [4096]
        }
    }

    public func requireBlockSize(_ size: Int) throws {
        guard !blockSizes.contains(size) else { return }
        if self == .erofs {
            throw RootfsError("--block-size \(size) cannot be used with erofs: erofs is written with 4096-byte blocks only",
                              hint: "mkfs.erofs uses the page size (4096) and kernels mount erofs only with blocks of the page size; Kata refuses any other size too. Drop --block-size or give 4096")
        }
        throw RootfsError("--block-size \(size) cannot be used with \(rawValue)",
                          hint: "\(rawValue) is written with blocks of \(blockSizes.map(String.init).joined(separator: ", ")) bytes")
    }
}

/// `--erofs-compression`: what mkfs.erofs compresses file data with.
public enum ErofsCompression: String, Sendable, CaseIterable, Codable {
    case lz4hc, lz4, none

    /// Parses a flag value, with a clear error naming the choices.
    public static func parse(_ text: String) throws -> ErofsCompression {
        if let c = ErofsCompression(rawValue: text.lowercased()) { return c }
        throw RootfsError("unknown --erofs-compression '\(text)'",
                          hint: "give lz4hc (Kata's, the default), lz4 or none; mkfs.erofs 1.5 has no other compressor")
    }
}

func roundUp(_ value: Int64, _ unit: Int64) -> Int64 { (value + unit - 1) / unit * unit }
