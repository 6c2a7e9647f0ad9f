import RootfsSupport
import Glibc

/// Writes a dynamic VHD (Microsoft's VHD format 1.0, LinuxKit's `dynamic-vhd`)
/// from a raw disk or a bare file system, in one streaming pass (one 1 MiB
/// chunk and the BAT, 4 bytes per 2 MiB, in memory).
///
/// Layout: a copy of the footer at 0, the dynamic disk header at 512, the BAT
/// at 1536 (one big-endian sector number per 2 MiB block, 0xFFFFFFFF for a
/// block not stored), then the stored blocks in disk order, each a 512-byte
/// sector bitmap (every sector present) and the block's 2 MiB of data, then
/// the footer. Blocks that are all zeros are not stored (read as zeros);
/// zero parts of a stored block are holes in the output file.
///
/// The footer's size is the exact virtual size (the input rounded up to whole
/// sectors), with the CHS geometry of the VHD specification's algorithm. Its
/// creator application is "qem2": QEMU trusts the footer's size only for the
/// creators it knows to write it exactly (Hyper-V "win ", "qem2"...), and
/// otherwise rounds the disk down to its CHS geometry; "qem2" is what
/// `qemu-img convert -o force_size=on` (rootfs's fixed VHD) writes too.
/// Reproducible: the time stamp is SOURCE_DATE_EPOCH and the unique id derives
/// from it and the input's identity.
public struct DynamicVHDWriter: Sendable {
    public var epoch: Int?

    public init(epoch: Int? = nil) { self.epoch = epoch }

    static let blockSize = 2 << 20
    static let sector = 512
    static let headerOffset = 512
    static let tableOffset = 1536
    /// Microsoft's limit for VHD disks (the BAT's 32-bit sector numbers end at 2 TiB of file).
    static let maximumSize: UInt64 = 2040 << 30
    static let unused: UInt32 = 0xFFFF_FFFF
    /// Seconds from the Unix epoch to the VHD epoch, 2000-01-01 00:00:00 UTC.
    static let vhdEpoch = 946_684_800

    /// Writes `rawDisk` as a dynamic VHD at `output` (a temporary name renamed when complete).
    public func write(rawDisk: String, to output: String) throws -> VirtualDiskStats {
        var input = try RawDiskInput(path: rawDisk, format: "a dynamic VHD", maximum: Self.maximumSize, maximumText: "2040 GiB")
        let virtualSize = input.virtualSize
        let blocks = Int((virtualSize + UInt64(Self.blockSize) - 1) / UInt64(Self.blockSize))
        let tableBytes = (blocks * 4 + Self.sector - 1) / Self.sector * Self.sector
        let firstBlock = Int64(Self.tableOffset + tableBytes)
        let bitmapBytes = Self.sector  // 4096 sectors per block: 512 bytes of bitmap, one sector

        let temporary = FS.siblingTemporaryPath(for: output)
        var out = try OwnedFileDescriptor(path: temporary, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644, name: output)
        var renamed = false
        defer { if !renamed { unlink(temporary) } }

        let bitmap = [UInt8](repeating: 0xFF, count: bitmapBytes)
        var bat = [UInt32](repeating: Self.unused, count: blocks)
        var next = firstBlock
        var stored = 0
        for block in 0..<blocks {
            if Task.isCancelled { throw CancellationError() }
            let start = Int64(block) * Int64(Self.blockSize)
            let data = next + Int64(bitmapBytes)
            var anyData = false
            for part in stride(from: 0, to: Self.blockSize, by: RawDiskInput.chunkSize) {
                let chunk = try input.chunk(at: start + Int64(part), count: RawDiskInput.chunkSize)
                if !chunk.zero { try out.writeAll(chunk.bytes, at: data + Int64(part)) }
                anyData = anyData || !chunk.zero
            }
            guard anyData else { continue }
            bat[block] = try Checked.convert(next / Int64(Self.sector), to: UInt32.self, "the VHD block offset of \(rawDisk)")
            try out.writeAll(bitmap, at: next)
            next = data + Int64(Self.blockSize)
            stored += 1
        }

        let footer = Self.footer(virtualSize: virtualSize, identity: input.identity(), epoch: epoch)
        var table = BinaryEncoder(order: .big, capacity: tableBytes)
        for entry in bat { table.append(entry) }
        // The table's last sector is padded with unused entries.
        while table.count < tableBytes { table.append(Self.unused) }
        try out.writeAll(footer, at: 0)
        try out.writeAll(Self.dynamicHeader(tableEntries: blocks), at: Int64(Self.headerOffset))
        try out.writeAll(table.bytes, at: Int64(Self.tableOffset))
        try out.writeAll(footer, at: next)
        try out.close()
        try FS.rename(temporary, to: output)
        renamed = true
        return VirtualDiskStats(virtualSize: virtualSize, paddedBytes: input.paddedBytes, blockSize: Self.blockSize,
                                blocks: blocks, storedBlocks: stored, outputBytes: next + Int64(Self.sector))
    }

    /// The 512-byte footer (also the copy at offset 0).
    static func footer(virtualSize: UInt64, identity: [UInt8], epoch: Int?) -> [UInt8] {
        let (cylinders, heads, sectors) = geometry(sectors: virtualSize / UInt64(sector))
        let seconds = epoch ?? Int(time(nil))
        var f = BinaryEncoder(order: .big, zeros: sector)
        f.put(Array("conectix".utf8), at: 0)
        f.put(UInt32(2), at: 8)  // Features: the reserved bit that must be set
        f.put(UInt32(0x0001_0000), at: 12)  // File format version 1.0
        f.put(UInt64(headerOffset), at: 16)
        f.put(UInt32(clamping: max(0, seconds - vhdEpoch)), at: 24)
        f.put(Array("qem2".utf8), at: 28)
        f.put(UInt32(0x0001_0000), at: 32)  // Creator version
        f.put(Array("Wi2k".utf8), at: 36)  // Creator host OS
        f.put(virtualSize, at: 40)  // Original size
        f.put(virtualSize, at: 48)  // Current size
        f.put(cylinders, at: 56)
        f.put(heads, at: 58)
        f.put(sectors, at: 59)
        f.put(UInt32(3), at: 60)  // Disk type: dynamic
        f.put(DerivedGUID.make("vhd-unique-id", identity: identity, epoch: epoch), at: 68)
        f.put(checksum(f.bytes), at: 64)
        return f.bytes
    }

    /// The 1024-byte dynamic disk header.
    static func dynamicHeader(tableEntries: Int) -> [UInt8] {
        var h = BinaryEncoder(order: .big, zeros: 1024)
        h.put(Array("cxsparse".utf8), at: 0)
        h.put(UInt64.max, at: 8)  // Data offset: unused
        h.put(UInt64(tableOffset), at: 16)
        h.put(UInt32(0x0001_0000), at: 24)  // Header version
        h.put(UInt32(tableEntries), at: 28)
        h.put(UInt32(blockSize), at: 32)
        h.put(checksum(h.bytes), at: 36)
        return h.bytes
    }

    /// One's complement of the byte sum, the checksum field counted as zero.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        ~bytes.reduce(UInt32(0)) { $0 &+ UInt32($1) }
    }

    /// The CHS geometry of the VHD specification (appendix: CHS calculation).
    static func geometry(sectors total: UInt64) -> (cylinders: UInt16, heads: UInt8, sectors: UInt8) {
        let totalSectors = min(total, 65535 * 16 * 255)
        var sectorsPerTrack: UInt64, heads: UInt64, cylinderTimesHeads: UInt64
        if totalSectors >= 65535 * 16 * 63 {
            sectorsPerTrack = 255
            heads = 16
            cylinderTimesHeads = totalSectors / sectorsPerTrack
        } else {
            sectorsPerTrack = 17
            cylinderTimesHeads = totalSectors / sectorsPerTrack
            heads = max(4, (cylinderTimesHeads + 1023) / 1024)
            if cylinderTimesHeads >= heads * 1024 || heads > 16 {
                sectorsPerTrack = 31
                heads = 16
                cylinderTimesHeads = totalSectors / sectorsPerTrack
            }
            if cylinderTimesHeads >= heads * 1024 {
                sectorsPerTrack = 63
                heads = 16
                cylinderTimesHeads = totalSectors / sectorsPerTrack
            }
        }
        return (UInt16(cylinderTimesHeads / heads), UInt8(heads), UInt8(sectorsPerTrack))
    }
}
