import RootfsSupport
import Foundation

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
    /// Prepend Kata's 2 MiB NVDIMM/DAX header (DAXHeader.swift).
    public var dax = false
    /// Round the image's size up to a multiple of this many MiB (`--align`, Kata's
    /// IMAGE_SIZE_ALIGNMENT_MB); nil: whole MiB. The partition spans the rounded size.
    public var alignmentMiB: Int?
    /// Which program writes ext4: rootfs's own writer (default) or `mke2fs -d`.
    public var ext4Writer: Ext4WriterKind = .native
    /// `--verity`: partition 2 holds the dm-verity hash tree of partition 1 (VerityDisk.swift).
    public var verity = false
    /// The guest's architecture: a verity GPT disk's Discoverable Partitions types.
    public var architecture = hostArchitecture()
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

    /// The largest value `--align` and IMAGE_SIZE_ALIGNMENT_MB take (16 TiB, as --free-space).
    public static let maxAlignmentMiB = 16 << 20

    /// IMAGE_SIZE_ALIGNMENT_MB (or a flag's text) as a step in MiB: a whole number from 1 to 16 TiB.
    public static func alignmentMiB(parsing text: String, from name: String) throws -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let value = Int(trimmed), value >= 1, value <= maxAlignmentMiB else {
            throw RootfsError("\(name) '\(text)' is not an image size step in MiB",
                              hint: "give a whole number of MiB from 1 to \(maxAlignmentMiB) (Kata's default is 128)")
        }
        return value
    }

    /// The step the image's size is rounded up to, in bytes: `alignmentMiB`, and with the DAX
    /// header also a multiple of its 2 MiB (the nvdimm driver maps only a namespace ending on 2 MiB).
    public func alignmentBytes() throws -> Int64 {
        let mib = alignmentMiB ?? 1
        guard mib >= 1, mib <= Self.maxAlignmentMiB else {
            throw RootfsError("--align \(mib) is not an image size step", hint: "give a whole number of MiB from 1 to \(Self.maxAlignmentMiB)")
        }
        let step = try Checked.multiply(Int64(mib), 1 << 20, "--align \(mib) MiB in bytes")
        // Every step is whole MiB: with an odd number of them, twice the step is the least common multiple with 2 MiB.
        return dax && step % DAXHeader.alignment != 0 ? try Checked.multiply(step, 2, "--align \(mib) MiB with the DAX header") : step
    }

    /// What the partition table limits the disk to (nil: no limit below the file system's own).
    var diskLimit: (bytes: Int64, table: String)? {
        switch partitionTable {
        case .mbr: return (MBR.maxDiskBytes, dax ? "Kata's DAX layout (an MBR)" : "an MBR partition table")
        case .gpt, .none: return nil
        }
    }

    @discardableResult
    public func write(source: TreeSource, to output: String) async throws -> (stats: WriteStats, uuid: String) {
        let written = try await writeDisk(source: source, to: output)
        return (written.stats, written.uuid)
    }

    /// What `writeDisk` wrote: sizes, the file system UUID and, with `verity`, the tree's parameters.
    public struct DiskWritten: Sendable {
        public var stats: WriteStats
        public var uuid: String
        public var verity: VerityParameters?
    }

    /// `--verity` needs two partitions and no DAX header (Kata's measured images are
    /// SKIP_DAX_HEADER=yes): refused before anything is written.
    public static func requireVerityLayout(partitionTable: PartitionTable, dax: Bool) throws {
        if partitionTable == .none {
            throw RootfsError("--verity puts the hash tree in a second partition: it needs a partition table",
                              hint: "drop --no-partition-table (MBR by default, or --partition-table gpt), or write the tree of a bare image with `rootfs verity`")
        }
        if dax {
            throw RootfsError("--verity and --dax together are not supported (Kata's measured images are built with SKIP_DAX_HEADER=yes)",
                              hint: "drop --dax")
        }
    }

    public func writeDisk(source: TreeSource, to output: String) async throws -> DiskWritten {
        if verity { try Self.requireVerityLayout(partitionTable: partitionTable, dax: dax) }
        if dax && partitionTable != .mbr {
            throw RootfsError("--dax needs an MBR partition table (Kata's NVDIMM layout)",
                              hint: "drop --partition-table gpt / --no-partition-table, or drop --dax")
        }
        let alignment = try alignmentBytes()
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
        var target = FilesystemTarget(source: source, directory: root, fd: fd, image: temporary, offset: base,
                                      tail: tail, output: output, uuid: uuid)
        target.alignment = alignment
        target.limit = diskLimit
        let written = try await fsWriter.write(into: target, disk: self)
        // The partition spans the rounded image; the file system keeps its own size inside it.
        let partitionBytes = try target.partitionBytes(forFilesystem: written.filesystemBytes)
        let filesystemBytes = written.filesystemBytes
        stats.inputBytes = written.inputBytes
        // Verity: partition 2, at the next MiB after the file system, holds the tree of its
        // blocks, hashed straight from the image just written (streaming, no loop device).
        var verityParameters: VerityParameters?
        var hashPartitionBytes: Int64 = 0
        // After partition 1 as aligned (--align): the hash tree never shares its last MiB.
        let hashStart = base + roundUp(partitionBytes, Self.partitionOffset)
        if verity {
            guard filesystemBytes % Int64(VerityHashTree.blockSize) == 0 else {
                throw RootfsError("the file system of \(output) is \(filesystemBytes) bytes, not whole 4 KiB blocks: dm-verity cannot cover it all")
            }
            let dataBlocks = UInt64(filesystemBytes) / UInt64(VerityHashTree.blockSize)
            hashPartitionBytes = max(Self.partitionOffset, roundUp(try VerityHashTree.hashSize(dataBlocks: dataBlocks), Self.partitionOffset))
            guard ftruncate(fd, off_t(hashStart + hashPartitionBytes + tail)) == 0 else {
                throw RootfsError("cannot size \(output): \(FS.errnoText())")
            }
            let salt = try VerityDisk.salt(epoch: epoch, data: temporary, offset: base, length: filesystemBytes)
            var borrowed = OwnedFileDescriptor(taking: fd, name: output)
            defer { _ = borrowed.release() }
            verityParameters = try VerityHashTree.write(data: borrowed, offset: base, length: filesystemBytes,
                                                        hash: borrowed, hashOffset: hashStart, salt: salt)
        }
        let diskEnd = verity ? hashStart + hashPartitionBytes : base + partitionBytes
        let signatureSource = uuid.replacingOccurrences(of: "-", with: "").prefix(8)
        let signature = UInt32(signatureSource, radix: 16) ?? 0
        let diskStart = dax ? DAXHeader.size : 0
        switch partitionTable {
        case .mbr:
            var mbr = try MBR(diskSignature: signature, partitionStart: Self.partitionOffset, partitionBytes: partitionBytes, what: output)
            if verity {
                let hashEnd = try Checked.add(hashStart, hashPartitionBytes, "the end of the hash partition of \(output)")
                guard hashEnd <= MBR.maxDiskBytes, let start = UInt32(exactly: hashStart / 512), let sectors = UInt32(exactly: hashPartitionBytes / 512) else {
                    throw RootfsError("\(output) would be \(formatBytes(diskEnd)): too big for an MBR (2 TiB)", hint: "use --partition-table gpt")
                }
                mbr.secondPartition = (start, sectors)
            }
            try FS.write(mbr.bytes, to: fd, at: diskStart, name: output)
            if dax {
                let header = try DAXHeader(innerPartitionOffset: Self.partitionOffset, partitionBytes: partitionBytes,
                                           signature: signature, what: output)
                try FS.write(header.encoded(), to: fd, at: 0, name: output)
            }
        case .gpt:
            let sectors = UInt64((diskEnd + tail) / 512)
            var gpt = GPT(diskSectors: sectors, firstSector: UInt64(Self.partitionOffset / 512),
                          lastSector: UInt64((Self.partitionOffset + partitionBytes) / 512) - 1,
                          diskGUID: derivedGUID("disk", uuid), partitionGUID: derivedGUID("part", uuid), partitionName: label)
            if let p = verityParameters {
                // The Discoverable Partitions Specification: root and root-verity types, and (as
                // systemd-repart does) the partition UUIDs from the root hash's halves.
                let types = VerityDisk.discoverableTypes(architecture: architecture)
                if let types { gpt.typeGUID = types.root }
                let hash = Array(p.rootHash)
                func guid(_ h: ArraySlice<Character>) -> String {
                    let c = Array(h)
                    return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
                }
                gpt.partitionGUID = guid(hash[0..<32])
                gpt.morePartitions = [GPT.Partition(typeGUID: types?.verity ?? GPT.linuxFilesystemType, partitionGUID: guid(hash[32..<64]),
                                                    firstSector: UInt64(hashStart / 512), lastSector: UInt64((hashStart + hashPartitionBytes) / 512) - 1,
                                                    name: label + "-verity")]
            }
            for (lba, bytes) in gpt.sectors { try FS.write(bytes, to: fd, at: Int64(lba) * 512, name: output) }
        case .none:
            break
        }
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
        keep = true
        stats.outputBytes = diskEnd + tail
        return DiskWritten(stats: stats, uuid: uuid, verity: verityParameters)
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
