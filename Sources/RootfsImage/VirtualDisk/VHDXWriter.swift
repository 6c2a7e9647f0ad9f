import RootfsSupport
import Glibc

/// Writes a VHDX (MS-VHDX v1) from a raw disk or a bare file system, in one
/// streaming pass with bounded memory (one 1 MiB chunk and the BAT, at most
/// 8 MiB: the block size grows with the disk to keep it so).
///
/// Layout: the header section (file identifier, two headers, two region
/// tables) in the first MiB, an empty 1 MiB log (LogGuid zero: nothing to
/// replay), the metadata region (file parameters, virtual disk size, page 83
/// id, logical sector 512, physical sector 4096), the BAT, then the payload
/// blocks in disk order. Dynamic (the default) stores only blocks holding a
/// non-zero byte (the others are PAYLOAD_BLOCK_NOT_PRESENT, read as zeros);
/// fixed stores every block (FULLY_PRESENT, LeaveBlockAllocated set). Zero
/// parts of a stored block are holes in the output file: the bytes are the
/// same, the file is sparse on the host.
///
/// Reproducible: the file write, data write and page 83 GUIDs derive from
/// the input's identity (its size, its non-zero chunks' offsets and XXH64s)
/// and SOURCE_DATE_EPOCH; nothing is random and VHDX has no time stamp.
public struct VHDXWriter: Sendable {
    public enum Kind: String, Sendable { case dynamic, fixed }

    public var kind: Kind
    public var epoch: Int?
    /// The payload block size (a power of two, 1 to 256 MiB); nil: 1 MiB (Microsoft's
    /// advice for Linux guests), doubled while the disk would need more than 2^20 blocks.
    public var blockSize: Int?

    public init(kind: Kind = .dynamic, epoch: Int? = nil, blockSize: Int? = nil) {
        self.kind = kind
        self.epoch = epoch
        self.blockSize = blockSize
    }

    static let mib = 1 << 20
    static let logOffset = 1 << 20
    static let logLength = 1 << 20
    static let metadataOffset = 2 << 20
    static let metadataLength = 1 << 20
    static let batOffset = 3 << 20
    static let logicalSectorSize = 512
    static let physicalSectorSize = 4096
    /// MS-VHDX: a virtual disk holds at most 64 TiB.
    static let maximumSize: UInt64 = 64 << 40

    static let batGUID = DerivedGUID.constant(0x2DC2_7766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08])
    static let metadataGUID = DerivedGUID.constant(0x8B7C_A206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E])
    static let fileParametersGUID = DerivedGUID.constant(0xCAA1_6737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B])
    static let virtualDiskSizeGUID = DerivedGUID.constant(0x2FA5_4224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8])
    static let page83GUID = DerivedGUID.constant(0xBECA_12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46])
    static let logicalSectorGUID = DerivedGUID.constant(0x8141_BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F])
    static let physicalSectorGUID = DerivedGUID.constant(0xCDA3_48C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56])

    /// BAT entry states (MS-VHDX 2.5.1.1).
    static let payloadBlockNotPresent: UInt64 = 0
    static let payloadBlockFullyPresent: UInt64 = 6

    /// Where each part of the file goes, computed from the virtual size before anything is written.
    struct Layout: Equatable {
        var virtualSize: UInt64
        var blockSize: Int
        var payloadBlocks: Int
        /// Payload blocks per sector bitmap block: 2^23 sectors' worth.
        var chunkRatio: Int
        var batEntries: Int
        var batLength: Int
        var payloadOffset: Int64

        init(virtualSize: UInt64, blockSize requested: Int?) throws {
            guard virtualSize > 0, virtualSize % UInt64(VHDXWriter.logicalSectorSize) == 0, virtualSize <= VHDXWriter.maximumSize else {
                throw RootfsError("a VHDX virtual size must be whole 512-byte sectors, at most 64 TiB, not \(virtualSize) bytes")
            }
            var block = requested ?? VHDXWriter.mib
            if requested == nil {
                while (virtualSize + UInt64(block) - 1) / UInt64(block) > 1 << 20 && block < 256 << 20 { block *= 2 }
            }
            guard block >= VHDXWriter.mib, block <= 256 << 20, block & (block - 1) == 0 else {
                throw RootfsError("a VHDX block size must be a power of two from 1 MiB to 256 MiB, not \(block)")
            }
            self.virtualSize = virtualSize
            blockSize = block
            payloadBlocks = Int((virtualSize + UInt64(block) - 1) / UInt64(block))
            chunkRatio = (1 << 23) * VHDXWriter.logicalSectorSize / block
            batEntries = payloadBlocks + (payloadBlocks - 1) / chunkRatio
            let bytes = try Checked.multiply(batEntries, 8, "the VHDX BAT size")
            batLength = try Checked.add(bytes, VHDXWriter.mib - 1, "the VHDX BAT size") / VHDXWriter.mib * VHDXWriter.mib
            guard batLength <= Int(UInt32.max) else { throw RootfsError("the VHDX BAT (\(batLength) bytes) is too large for its region") }
            payloadOffset = Int64(VHDXWriter.batOffset + batLength)
        }

        /// The BAT index of payload block `i`: a sector bitmap entry follows every `chunkRatio` payload entries.
        func batIndex(ofBlock i: Int) -> Int { i + i / chunkRatio }
    }

    /// Writes `rawDisk` as a VHDX at `output` (a temporary name renamed when complete).
    public func write(rawDisk: String, to output: String) throws -> VirtualDiskStats {
        var input = try RawDiskInput(path: rawDisk, format: "VHDX", maximum: Self.maximumSize, maximumText: "64 TiB")
        let layout = try Layout(virtualSize: input.virtualSize, blockSize: blockSize)
        let temporary = FS.siblingTemporaryPath(for: output)
        var out = try OwnedFileDescriptor(path: temporary, flags: O_WRONLY | O_CREAT | O_EXCL, mode: 0o644, name: output)
        var renamed = false
        defer { if !renamed { unlink(temporary) } }

        var bat = [UInt64](repeating: 0, count: layout.batEntries)
        var next = layout.payloadOffset
        var stored = 0
        for block in 0..<layout.payloadBlocks {
            if Task.isCancelled { throw CancellationError() }
            let start = Int64(block) * Int64(layout.blockSize)
            var anyData = false
            for part in stride(from: 0, to: layout.blockSize, by: RawDiskInput.chunkSize) {
                let chunk = try input.chunk(at: start + Int64(part), count: RawDiskInput.chunkSize)
                // Zero chunks are not written: they stay holes of the output file, which read as zeros.
                if !chunk.zero { try out.writeAll(chunk.bytes, at: next + Int64(part)) }
                anyData = anyData || !chunk.zero
            }
            if anyData || kind == .fixed {
                // FileOffsetMB is bits 20-63 and `next` is whole MiBs, so the entry is the offset with the state in bits 0-2.
                bat[layout.batIndex(ofBlock: block)] = UInt64(next) | Self.payloadBlockFullyPresent
                next += Int64(layout.blockSize)
                stored += 1
            } else {
                bat[layout.batIndex(ofBlock: block)] = Self.payloadBlockNotPresent
            }
        }

        let identity = input.identity()
        for (offset, bytes) in Self.structures(layout: layout, bat: bat, fixed: kind == .fixed, identity: identity, epoch: epoch) {
            try out.writeAll(bytes, at: Int64(offset))
        }
        guard ftruncate(out.raw, off_t(next)) == 0 else {
            throw RootfsError("cannot set the size of \(output): \(FS.errnoText())")
        }
        try out.close()
        try FS.rename(temporary, to: output)
        renamed = true
        return VirtualDiskStats(virtualSize: layout.virtualSize, paddedBytes: input.paddedBytes, blockSize: layout.blockSize,
                                blocks: layout.payloadBlocks, storedBlocks: stored, outputBytes: Int64(next))
    }

    /// Everything but the payload: (file offset, bytes).
    static func structures(layout: Layout, bat: [UInt64], fixed: Bool, identity: [UInt8], epoch: Int?) -> [(Int, [UInt8])] {
        var parts: [(Int, [UInt8])] = []

        // File type identifier: signature and a UTF-16 creator name (diagnostic only).
        var identifier = BinaryEncoder(order: .little, capacity: 4096)
        identifier.append(Array("vhdxfile".utf8))
        for unit in "rootfs".utf16 { identifier.append(unit) }
        identifier.append(UInt16(0))
        parts.append((0, identifier.bytes))

        // Two headers; the one with the larger sequence number is current, and both are valid.
        let fileWrite = DerivedGUID.make("vhdx-file-write", identity: identity, epoch: epoch)
        let dataWrite = DerivedGUID.make("vhdx-data-write", identity: identity, epoch: epoch)
        for (index, sequence) in [(1, UInt64(1)), (2, UInt64(2))] {
            var h = BinaryEncoder(order: .little, zeros: 4096)
            h.put(Array("head".utf8), at: 0)
            h.put(sequence, at: 8)
            h.put(fileWrite, at: 16)
            h.put(dataWrite, at: 32)
            // LogGuid (48..<64) stays zero: the log is empty.
            h.put(UInt16(0), at: 64)  // LogVersion
            h.put(UInt16(1), at: 66)  // Version
            h.put(UInt32(logLength), at: 68)
            h.put(UInt64(logOffset), at: 72)
            h.put(CRC32C.standard(h.bytes), at: 4)
            parts.append((index * 64 * 1024, h.bytes))
        }

        // Two identical region tables: the BAT and the metadata region, both required.
        var table = BinaryEncoder(order: .little, zeros: 64 * 1024)
        table.put(Array("regi".utf8), at: 0)
        table.put(UInt32(2), at: 8)
        for (i, (guid, offset, length)) in [(batGUID, batOffset, layout.batLength), (metadataGUID, metadataOffset, metadataLength)].enumerated() {
            let base = 16 + 32 * i
            table.put(guid, at: base)
            table.put(UInt64(offset), at: base + 16)
            table.put(UInt32(length), at: base + 24)
            table.put(UInt32(1), at: base + 28)  // Required
        }
        table.put(CRC32C.standard(table.bytes), at: 4)
        parts.append((3 * 64 * 1024, table.bytes))
        parts.append((4 * 64 * 1024, table.bytes))

        // The log region is left as zeros (a hole): with LogGuid zero no reader replays it.

        // Metadata: the table, then the items from 64 KiB into the region.
        let isVirtualDisk: UInt32 = 2, isRequired: UInt32 = 4
        var items = BinaryEncoder(order: .little)
        var fileParameters = BinaryEncoder(order: .little)
        fileParameters.append(UInt32(layout.blockSize))
        fileParameters.append(UInt32(fixed ? 1 : 0))  // LeaveBlockAllocated; HasParent (bit 1) clear
        var size = BinaryEncoder(order: .little)
        size.append(layout.virtualSize)
        var logical = BinaryEncoder(order: .little)
        logical.append(UInt32(logicalSectorSize))
        var physical = BinaryEncoder(order: .little)
        physical.append(UInt32(physicalSectorSize))
        let entries: [([UInt8], [UInt8], UInt32)] = [
            (fileParametersGUID, fileParameters.bytes, isRequired),
            (virtualDiskSizeGUID, size.bytes, isVirtualDisk | isRequired),
            (page83GUID, DerivedGUID.make("vhdx-page83", identity: identity, epoch: epoch), isVirtualDisk | isRequired),
            (logicalSectorGUID, logical.bytes, isVirtualDisk | isRequired),
            (physicalSectorGUID, physical.bytes, isVirtualDisk | isRequired),
        ]
        var metadata = BinaryEncoder(order: .little, zeros: 64 * 1024)
        metadata.put(Array("metadata".utf8), at: 0)
        metadata.put(UInt16(entries.count), at: 10)
        for (i, (guid, value, flags)) in entries.enumerated() {
            let base = 32 + 32 * i
            metadata.put(guid, at: base)
            metadata.put(UInt32(64 * 1024 + items.count), at: base + 16)
            metadata.put(UInt32(value.count), at: base + 20)
            metadata.put(flags, at: base + 24)
            items.append(value)
        }
        metadata.append(items.bytes)
        parts.append((metadataOffset, metadata.bytes))

        var encodedBAT = BinaryEncoder(order: .little, capacity: bat.count * 8)
        for entry in bat { encodedBAT.append(entry) }
        parts.append((batOffset, encodedBAT.bytes))
        return parts
    }
}
