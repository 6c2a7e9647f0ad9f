import RootfsSupport
import Foundation

/// CRC-32 (IEEE 802.3, reflected), as GPT headers and entry arrays use it.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}

/// A GUID partition table with one partition, written by hand: protective MBR,
/// primary header and entries at LBA 1-33, backup entries and header at the end.
public struct GPT: Sendable {
    /// "Linux filesystem data".
    public static let linuxFilesystemType = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    public static let entryCount = 128
    public static let entrySize = 128
    /// Sectors taken by the entry array (16 KiB).
    public static let entrySectors: UInt64 = 32

    public var diskSectors: UInt64
    public var firstSector: UInt64
    public var lastSector: UInt64
    public var diskGUID: String
    public var partitionGUID: String
    public var partitionName: String
    public var typeGUID = GPT.linuxFilesystemType
    /// Partitions after the first (entries 2, 3, ...): an EFI disk's root after its ESP.
    public var morePartitions: [Partition] = []

    /// One more entry of the table.
    public struct Partition: Sendable {
        public var typeGUID: String
        public var partitionGUID: String
        public var firstSector: UInt64
        public var lastSector: UInt64
        public var name: String
        public init(typeGUID: String, partitionGUID: String, firstSector: UInt64, lastSector: UInt64, name: String) {
            self.typeGUID = typeGUID
            self.partitionGUID = partitionGUID
            self.firstSector = firstSector
            self.lastSector = lastSector
            self.name = name
        }
    }

    /// The sectors to write: (LBA, bytes).
    public var sectors: [(lba: UInt64, bytes: [UInt8])] {
        var entries = [UInt8](repeating: 0, count: Self.entryCount * Self.entrySize)
        entries.replaceSubrange(0..<16, with: Self.guidBytes(typeGUID))
        entries.replaceSubrange(16..<32, with: Self.guidBytes(partitionGUID))
        put64(&entries, 32, firstSector)
        put64(&entries, 40, lastSector)
        let name = Array(partitionName.utf16.prefix(36))
        for (i, u) in name.enumerated() { put16(&entries, 56 + 2 * i, u) }
        for (n, p) in morePartitions.prefix(Self.entryCount - 1).enumerated() {
            let o = (n + 1) * Self.entrySize
            entries.replaceSubrange(o..<(o + 16), with: Self.guidBytes(p.typeGUID))
            entries.replaceSubrange((o + 16)..<(o + 32), with: Self.guidBytes(p.partitionGUID))
            put64(&entries, o + 32, p.firstSector)
            put64(&entries, o + 40, p.lastSector)
            for (i, u) in Array(p.name.utf16.prefix(36)).enumerated() { put16(&entries, o + 56 + 2 * i, u) }
        }
        let entriesCRC = CRC32.checksum(entries)
        let backupEntriesLBA = diskSectors - 1 - Self.entrySectors
        func header(current: UInt64, backup: UInt64, entriesLBA: UInt64) -> [UInt8] {
            var h = [UInt8](repeating: 0, count: 512)
            h.replaceSubrange(0..<8, with: Array("EFI PART".utf8))
            put32(&h, 8, 0x0001_0000)
            put32(&h, 12, 92)
            put64(&h, 24, current)
            put64(&h, 32, backup)
            put64(&h, 40, 2 + Self.entrySectors)                   // first usable
            put64(&h, 48, backupEntriesLBA - 1)                    // last usable
            h.replaceSubrange(56..<72, with: Self.guidBytes(diskGUID))
            put64(&h, 72, entriesLBA)
            put32(&h, 80, UInt32(Self.entryCount))
            put32(&h, 84, UInt32(Self.entrySize))
            put32(&h, 88, entriesCRC)
            put32(&h, 16, CRC32.checksum(Array(h[0..<92])))
            return h
        }
        var mbr = [UInt8](repeating: 0, count: 512)
        let p = 446
        mbr[p + 1] = 0x00; mbr[p + 2] = 0x02; mbr[p + 3] = 0x00
        mbr[p + 4] = 0xee
        mbr[p + 5] = 0xff; mbr[p + 6] = 0xff; mbr[p + 7] = 0xff
        put32(&mbr, p + 8, 1)
        put32(&mbr, p + 12, UInt32(min(diskSectors - 1, 0xFFFF_FFFF)))
        mbr[510] = 0x55; mbr[511] = 0xaa
        return [
            (0, mbr),
            (1, header(current: 1, backup: diskSectors - 1, entriesLBA: 2)),
            (2, entries),
            (backupEntriesLBA, entries),
            (diskSectors - 1, header(current: diskSectors - 1, backup: 1, entriesLBA: backupEntriesLBA)),
        ]
    }

    /// A GUID's on-disk bytes: the first three fields little-endian.
    static func guidBytes(_ text: String) -> [UInt8] {
        let hex = Array(text.replacingOccurrences(of: "-", with: ""))
        var b = stride(from: 0, to: 32, by: 2).map { UInt8(String(hex[$0..<$0 + 2]), radix: 16) ?? 0 }
        b[0..<4].reverse(); b[4..<6].reverse(); b[6..<8].reverse()
        return b
    }
}

func put16(_ b: inout [UInt8], _ o: Int, _ v: UInt16) { b[o] = UInt8(v & 0xff); b[o + 1] = UInt8(v >> 8) }
func put32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) { for i in 0..<4 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
func put64(_ b: inout [UInt8], _ o: Int, _ v: UInt64) { for i in 0..<8 { b[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
