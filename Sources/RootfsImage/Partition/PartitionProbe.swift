import RootfsSupport

/// The one reader of a disk's partition table, shared by `rootfs boot` (which
/// partition holds the root) and `rootfs extend` (where the ext4 file system
/// starts). Only the first partition matters to both. Every LBA, count and size
/// read from the disk is checked against the file and computed with checked
/// arithmetic: a crafted table (entries at LBA 2^64-1, 2^32-1 entries, entry
/// size 0, a truncated file) is a clear error, never a trap.
public struct PartitionProbe: Sendable {
    public enum Table: String, Sendable, Equatable { case mbr, gpt, none }

    /// The table found and the byte offset of its first partition (nil: no usable first partition).
    public struct Found: Sendable, Equatable {
        public var table: Table
        public var firstPartitionOffset: Int64?
    }

    public static let sectorSize: Int64 = 512

    /// `read(offset, count)` returns at most `count` bytes (fewer at the end);
    /// `size`: the disk's size in bytes when known (nil for a converted head).
    public static func probe(what: String, size: Int64?, read: (Int64, Int) throws -> [UInt8]) throws -> Found {
        let mbr = try read(0, 512)
        guard mbr.count == 512, mbr[510] == 0x55, mbr[511] == 0xaa else { return Found(table: .none) }
        let decoder = BinaryDecoder(mbr, what: "the MBR of \(what)")
        if try decoder.u8(446 + 4) == 0xee { return try gpt(what: what, size: size, read: read) }
        let start = UInt64(try decoder.u32(446 + 8)), sectors = UInt64(try decoder.u32(446 + 12))
        guard start > 0 else { return Found(table: .mbr) }
        let offset = try byteOffset(lba: start, what: "the first MBR partition of \(what)")
        if let size {
            let end = try Checked.add(start, sectors, "the end of the first MBR partition of \(what)")
            let endByte = try byteOffset(lba: end, what: "the end of the first MBR partition of \(what)")
            guard offset < size, endByte <= size || sectors == 0 else {
                throw RootfsError("the first partition of \(what) (sectors \(start)-\(end)) lies beyond the end of the file (\(size) bytes)",
                                  hint: "the image is truncated or its partition table is corrupt")
            }
        }
        return Found(table: .mbr, firstPartitionOffset: offset)
    }

    /// GPT: the header at LBA 1 names where its entry array is; entry 1's first LBA at +32.
    static func gpt(what: String, size: Int64?, read: (Int64, Int) throws -> [UInt8]) throws -> Found {
        let bytes = try read(sectorSize, 92)
        guard bytes.count == 92, Array(bytes.prefix(8)) == Array("EFI PART".utf8) else { return Found(table: .gpt) }
        let header = BinaryDecoder(bytes, what: "the GPT header of \(what)")
        let entriesLBA = try header.u64(72), count = try header.u32(80), entrySize = try header.u32(84)
        // UEFI: the entry size is 128 * 2^n; more than 4 KiB per entry is no table anyone writes.
        guard entrySize >= 128, entrySize <= 4096, entrySize.nonzeroBitCount == 1 else {
            throw RootfsError("the GPT of \(what) has an entry size of \(entrySize) bytes", hint: "a GPT entry is 128 bytes (or 128 times a power of two): the table is corrupt")
        }
        guard count >= 1 else { return Found(table: .gpt) }
        guard entriesLBA >= 2 else {
            throw RootfsError("the GPT of \(what) puts its entries at LBA \(entriesLBA), inside the header", hint: "the table is corrupt")
        }
        let entriesOffset = try byteOffset(lba: entriesLBA, what: "the GPT entries of \(what)")
        if let size, try Checked.add(entriesOffset, Int64(entrySize), "the GPT entries of \(what)") > size {
            throw RootfsError("the GPT of \(what) puts its entries at LBA \(entriesLBA), beyond the end of the file (\(size) bytes)",
                              hint: "the image is truncated or its partition table is corrupt")
        }
        let entryBytes = try read(entriesOffset, 48)
        guard entryBytes.count == 48 else {
            throw RootfsError("the GPT entries of \(what) at LBA \(entriesLBA) cannot be read", hint: "the image is truncated")
        }
        let entry = BinaryDecoder(entryBytes, what: "the first GPT entry of \(what)")
        let first = try entry.u64(32), last = try entry.u64(40)
        guard first > 0 else { return Found(table: .gpt) }
        guard last >= first else {
            throw RootfsError("the first GPT partition of \(what) ends (LBA \(last)) before it starts (LBA \(first))", hint: "the table is corrupt")
        }
        let offset = try byteOffset(lba: first, what: "the first GPT partition of \(what)")
        if let size {
            let end = try byteOffset(lba: try Checked.add(last, 1, "the end of the first GPT partition of \(what)"), what: "the end of the first GPT partition of \(what)")
            guard end <= size else {
                throw RootfsError("the first partition of \(what) (LBA \(first)-\(last)) lies beyond the end of the file (\(size) bytes)",
                                  hint: "the image is truncated or its partition table is corrupt")
            }
        }
        return Found(table: .gpt, firstPartitionOffset: offset)
    }

    /// The first `limit` partitions of an MBR (primary entries) or a GPT, in table order, as byte
    /// ranges checked against `size`: a verity disk's data and hash partitions.
    public static func partitions(what: String, size: Int64, limit: Int = 4,
                                  read: (Int64, Int) throws -> [UInt8]) throws -> [(offset: Int64, size: Int64)] {
        let mbr = try read(0, 512)
        guard mbr.count == 512, mbr[510] == 0x55, mbr[511] == 0xaa else { return [] }
        let decoder = BinaryDecoder(mbr, what: "the MBR of \(what)")
        var ranges: [(first: UInt64, sectors: UInt64)] = []
        if try decoder.u8(446 + 4) == 0xee {
            let bytes = try read(sectorSize, 92)
            guard bytes.count == 92, Array(bytes.prefix(8)) == Array("EFI PART".utf8) else { return [] }
            let header = BinaryDecoder(bytes, what: "the GPT header of \(what)")
            let entriesLBA = try header.u64(72), count = try header.u32(80), entrySize = try header.u32(84)
            guard entrySize >= 128, entrySize <= 4096, entrySize.nonzeroBitCount == 1, entriesLBA >= 2 else {
                throw RootfsError("the GPT of \(what) is corrupt (entries at LBA \(entriesLBA), \(entrySize) bytes each)")
            }
            let entriesOffset = try byteOffset(lba: entriesLBA, what: "the GPT entries of \(what)")
            for n in 0..<min(Int(count), limit) {
                let at = try Checked.add(entriesOffset, Int64(n) * Int64(entrySize), "a GPT entry of \(what)")
                let entry = try read(at, 48)
                guard entry.count == 48 else { break }
                let e = BinaryDecoder(entry, what: "GPT entry \(n + 1) of \(what)")
                let first = try e.u64(32), last = try e.u64(40)
                if first == 0 { break }
                guard last >= first else { throw RootfsError("GPT entry \(n + 1) of \(what) ends before it starts", hint: "the table is corrupt") }
                ranges.append((first, last - first + 1))
            }
        } else {
            for n in 0..<min(4, limit) {
                let start = UInt64(try decoder.u32(446 + 16 * n + 8)), sectors = UInt64(try decoder.u32(446 + 16 * n + 12))
                if start == 0 || sectors == 0 { break }
                ranges.append((start, sectors))
            }
        }
        return try ranges.enumerated().map { n, r in
            let offset = try byteOffset(lba: r.first, what: "partition \(n + 1) of \(what)")
            let bytes = try byteOffset(lba: r.sectors, what: "the size of partition \(n + 1) of \(what)")
            guard try Checked.add(offset, bytes, "the end of partition \(n + 1) of \(what)") <= size else {
                throw RootfsError("partition \(n + 1) of \(what) lies beyond the end of the file (\(size) bytes)",
                                  hint: "the image is truncated or its partition table is corrupt")
            }
            return (offset, bytes)
        }
    }

    /// LBA * 512 as a file offset, or a clear error when it cannot be one.
    static func byteOffset(lba: UInt64, what: String) throws -> Int64 {
        let (bytes, overflow) = lba.multipliedReportingOverflow(by: UInt64(sectorSize))
        guard !overflow, let offset = Int64(exactly: bytes) else {
            throw RootfsError("\(what) is at LBA \(lba), beyond any disk (more than 2^63 bytes)", hint: "the partition table is corrupt")
        }
        return offset
    }
}
