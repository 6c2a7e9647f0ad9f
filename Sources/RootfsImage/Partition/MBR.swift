import RootfsSupport

/// A DOS partition table (sector 0 of a raw disk) with one primary partition (two on a verity disk), as Kata's
/// image_builder.sh makes with parted (`mklabel msdos`, one partition to the last sector).
/// Its sector fields are 32 bits wide: a disk above 2 TiB cannot be described by it.
public struct MBR: Sendable, Equatable {
    public static let sectorSize: Int64 = 512
    /// The largest disk an MBR describes: 2^32 sectors of 512 bytes (2 TiB).
    public static let maxDiskBytes: Int64 = Int64(UInt32.max) * sectorSize + sectorSize

    public var diskSignature: UInt32
    public var partitionStartSector: UInt32
    public var partitionSectors: UInt32
    public var partitionType: UInt8 = 0x83
    /// A second primary partition (start sector, sectors): a verity disk's hash tree, as
    /// Kata's image_builder.sh makes it with parted (type 0x83, not active).
    public var secondPartition: (start: UInt32, sectors: UInt32)? = nil

    public static func == (a: MBR, b: MBR) -> Bool { a.bytes == b.bytes }

    public init(diskSignature: UInt32, partitionStartSector: UInt32, partitionSectors: UInt32, partitionType: UInt8 = 0x83) {
        self.diskSignature = diskSignature
        self.partitionStartSector = partitionStartSector
        self.partitionSectors = partitionSectors
        self.partitionType = partitionType
    }

    /// The table of a disk whose one partition starts at byte `start` and holds `bytes`:
    /// both whole sectors, and the partition's end within the 2 TiB an MBR can address.
    /// `what` names the disk in the error.
    public init(diskSignature: UInt32, partitionStart start: Int64, partitionBytes bytes: Int64, what: String) throws {
        guard start >= 0, bytes >= 0, start % Self.sectorSize == 0, bytes % Self.sectorSize == 0 else {
            throw RootfsError("the partition of \(what) (\(bytes) bytes at \(start)) is not in whole 512-byte sectors")
        }
        let end = try Checked.add(start, bytes, "the end of the partition of \(what)")
        guard end <= Self.maxDiskBytes else {
            throw RootfsError("\(what) would be \(Self.describe(end)): an MBR partition table describes at most 2 TiB (32-bit sector numbers)",
                              hint: "write a smaller image (less --free-space, a smaller --align), or use --partition-table gpt (without --dax: Kata's NVDIMM layout is MBR only)")
        }
        self.init(diskSignature: diskSignature,
                  partitionStartSector: try Checked.convert(start / Self.sectorSize, to: UInt32.self, "the first sector of the partition of \(what)"),
                  partitionSectors: try Checked.convert(bytes / Self.sectorSize, to: UInt32.self, "the sector count of the partition of \(what)"))
    }

    /// The 512-byte sector 0: no boot code, one active primary partition addressed by LBA, the signature.
    public var bytes: [UInt8] {
        var e = BinaryEncoder(zeros: 512)
        e.put(diskSignature, at: 440)
        let entry = 446
        e.put([0x80, 0xfe, 0xff, 0xff], at: entry)            // active; CHS start unused (0xfeffff: use LBA)
        e.put(partitionType, at: entry + 4)
        e.put([0xfe, 0xff, 0xff], at: entry + 5)              // CHS end unused
        e.put(partitionStartSector, at: entry + 8)
        e.put(partitionSectors, at: entry + 12)
        if let second = secondPartition {
            let next = entry + 16
            e.put([0x00, 0xfe, 0xff, 0xff], at: next)         // not active
            e.put(partitionType, at: next + 4)
            e.put([0xfe, 0xff, 0xff], at: next + 5)
            e.put(second.start, at: next + 8)
            e.put(second.sectors, at: next + 12)
        }
        e.put([0x55, 0xaa], at: 510)
        return e.bytes
    }

    static func describe(_ bytes: Int64) -> String {
        bytes >= 1 << 40 ? String(format: "%.2f TiB", Double(bytes) / Double(1 << 40)) : "\(bytes >> 20) MiB"
    }
}
